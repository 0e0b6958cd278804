"""doubleopt: double optimization in PyTorch.

One entry point, :func:`solve`, runs any solver on any batched problem under any adjoint.
"""

from . import adjoint, linalg, problems, solvers
from ._problem import Problem, ProblemFamily, batch_size
from ._solution import RESULTS, Solution, SolveError
from ._solve import default_tol, solve
from .adjoint import CG, GMRES, LU, Cholesky, FixedPoint, Implicit, Neumann, Truncated, Unroll
from .solvers import FISTA, GD, ISTA, LBFGS, Adagrad, Adam, Momentum, Nesterov, Newton, NonlinearCG, RMSProp

__version__ = "0.1.0"

__all__ = [
    "solve",
    "default_tol",
    "Problem",
    "ProblemFamily",
    "batch_size",
    "Solution",
    "SolveError",
    "RESULTS",
    "Unroll",
    "Truncated",
    "Implicit",
    "Neumann",
    "FixedPoint",
    "CG",
    "GMRES",
    "Cholesky",
    "LU",
    "GD",
    "Momentum",
    "Nesterov",
    "Adagrad",
    "RMSProp",
    "Adam",
    "LBFGS",
    "NonlinearCG",
    "Newton",
    "ISTA",
    "FISTA",
    "adjoint",
    "linalg",
    "problems",
    "solvers",
]

# Feature packages (each issue adds its line here):
from . import amortized, bilevel, distributed, layers, learned, physical, rl  # noqa: E402  (issues 6, 16, 14, 5, 4, 7, 20)
from .solvers.qp import QP, qp_solve  # noqa: E402  (issue 5: OptNet)

__all__ += ["amortized", "bilevel", "distributed", "layers", "learned", "physical", "rl", "QP", "qp_solve"]
