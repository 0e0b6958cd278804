"""Solvers: frozen configuration objects that ``doubleopt.solve`` runs."""

from ._base import GradientRuleSolver, GradientState, RuleState, Solver, UpdateRule
from .first_order import GD, Adagrad, Adam, Momentum, Nesterov, RMSProp
from .lbfgs import LBFGS
from .linesearch import LineSearchResult, armijo_backtracking
from .ncg import NonlinearCG
from .newton import Newton
from .proximal import FISTA, ISTA
from .qp import QP, QPState, qp_solve

__all__ = [
    "Solver", "GradientState", "GradientRuleSolver", "RuleState", "UpdateRule",
    "GD", "Momentum", "Nesterov", "Adagrad", "RMSProp", "Adam",
    "LBFGS", "NonlinearCG", "Newton", "ISTA", "FISTA",
    "armijo_backtracking", "LineSearchResult",
    "QP", "QPState", "qp_solve",
]

from .sinkhorn import Sinkhorn, SinkhornState  # noqa: E402

__all__ += ["Sinkhorn", "SinkhornState"]
