"""Information analysis: MI estimators, recording hooks, information-plane quantities and plots."""
from .estimators import METHODS, gaussian_mi, mutual_information, normal_scores
from .recorder import InfoRecorder, is_norm_layer, project

__all__ = ["mutual_information", "METHODS", "gaussian_mi", "normal_scores", "InfoRecorder", "is_norm_layer", "project"]
