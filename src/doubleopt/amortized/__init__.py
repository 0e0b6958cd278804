"""Amortized optimization: models that predict solutions, as solvers, with certificates and fallbacks.

See Amos, "Tutorial on amortized optimization" (Foundations and Trends in ML, 2023).

* Solvers: :func:`FullyAmortized`, :class:`SemiAmortized` (predict, then refine with any core solver).
* Trust: :class:`Safeguarded` + certificates (:class:`GradientNorm`, :class:`MarginalError`,
  :class:`KKTResidual`): per instance certified, or fallen back to a classical solver.
* Training: losses (regression, objective, unrolled), :func:`fit`, safetensors checkpoints,
  :func:`break_even` accounting.
* Applications: :class:`LISTA` / :class:`ALISTA` (sparse coding), :class:`PotentialMLP` (Meta OT),
  :mod:`doubleopt.amortized.vae` (amortized inference),
  :mod:`doubleopt.amortized.meta_ot_showcase` (the main job, ``doubleopt demo``).
"""

from ._certificates import Certificate, GradientNorm, KKTResidual, MarginalError, default_certificate
from ._safeguard import Safeguarded, index_context
from ._solvers import AmortizedState, FullyAmortized, SemiAmortized, predict
from ._train import (
    FitResult,
    break_even,
    fit,
    layerwise_loss,
    load_checkpoint,
    objective_loss,
    regression_loss,
    save_checkpoint,
    unrolled_loss,
)
from .lista import ALISTA, LISTA, analytic_weight, firm_threshold
from .meta_ot import PotentialMLP, SwapAveraged, ZeroPotential

__all__ = [
    "FullyAmortized",
    "SemiAmortized",
    "AmortizedState",
    "predict",
    "Safeguarded",
    "index_context",
    "Certificate",
    "GradientNorm",
    "MarginalError",
    "KKTResidual",
    "default_certificate",
    "fit",
    "FitResult",
    "layerwise_loss",
    "regression_loss",
    "objective_loss",
    "unrolled_loss",
    "save_checkpoint",
    "load_checkpoint",
    "break_even",
    "LISTA",
    "ALISTA",
    "firm_threshold",
    "analytic_weight",
    "PotentialMLP",
    "SwapAveraged",
    "ZeroPotential",
]
