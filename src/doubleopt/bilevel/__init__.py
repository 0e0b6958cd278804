"""Bilevel optimization: hyperparameters of an inner problem by hypergradients.

:func:`optimize` is the outer loop; the problems are regularization selection on digits (:class:`DigitsL2`),
data hyper-cleaning (:class:`HyperCleaning`) and sparse logistic regression at scale
(:class:`SparseLogisticL2`).
"""

from ._optimize import BilevelResult, OuterStep, ToleranceSchedule, optimize
from .cleaning import (
    CleaningData,
    CleaningReport,
    HyperCleaning,
    cleaning_report,
    cleaning_split,
    corrupt_labels,
    detection_scores,
)
from .digits import DigitsClassifier, DigitsContext, DigitsL2, digits_split
from .sparse_logistic import FeatureMatrix, SparseLogisticData, SparseLogisticL2, sparse_logistic_split

__all__ = [
    "optimize",
    "ToleranceSchedule",
    "OuterStep",
    "BilevelResult",
    "DigitsL2",
    "DigitsContext",
    "DigitsClassifier",
    "digits_split",
    "HyperCleaning",
    "CleaningData",
    "CleaningReport",
    "cleaning_split",
    "cleaning_report",
    "corrupt_labels",
    "detection_scores",
    "SparseLogisticL2",
    "SparseLogisticData",
    "FeatureMatrix",
    "sparse_logistic_split",
]
