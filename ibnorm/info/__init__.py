"""Mutual-information estimators (KSG, matrix Renyi, binning), validated on known answers.

Part of the library behind the optional ``info`` extra (``pip install 'ibnorm[info]'``: numpy and scipy),
so that anyone can measure their own representations; ``import ibnorm`` never loads it. The recorder that
captures a model's layers, the information-plane plots and the ``ibnorm info`` command are in
:mod:`ibnorm.lab.info`.
"""
from .estimators import METHODS, gaussian_mi, mutual_information, normal_scores

__all__ = ["mutual_information", "METHODS", "gaussian_mi", "normal_scores"]
