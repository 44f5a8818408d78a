"""Information analysis: MI estimators, recording hooks, information-plane quantities and plots."""
from .estimators import METHODS, mutual_information
from .recorder import InfoRecorder, is_norm_layer, project

__all__ = ["mutual_information", "METHODS", "InfoRecorder", "is_norm_layer", "project"]
