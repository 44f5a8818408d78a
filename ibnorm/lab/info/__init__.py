"""Information analysis of trained models: the recorder (hooks on every norm layer), the ``ibnorm info``
command, its seed summaries and plots, and the estimators' known-answer validation."""
from .recorder import InfoRecorder, is_norm_layer, project

__all__ = ["InfoRecorder", "is_norm_layer", "project"]
