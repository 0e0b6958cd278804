"""Bilevel optimization: hyperparameters of an inner problem by hypergradients (issue 16)."""

from ._optimize import BilevelResult, OuterStep, ToleranceSchedule, optimize
from .digits import DigitsContext, DigitsL2, digits_split

__all__ = ["optimize", "ToleranceSchedule", "OuterStep", "BilevelResult", "DigitsL2", "DigitsContext", "digits_split"]
