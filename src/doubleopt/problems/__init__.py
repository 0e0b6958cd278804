"""The problem zoo: seeded, batched problem families."""

from ._data import load_dataset
from .lasso import Lasso, LassoContext, soft_threshold
from .mlp import ClassificationContext, MLPClassifier
from .quadratic import Quadratic, QuadraticContext
from .regression import LogisticRegression, RegressionContext, RidgeRegression, RobustRegression
from .rosenbrock import Rosenbrock, RosenbrockContext

__all__ = [
    "Quadratic", "QuadraticContext", "Rosenbrock", "RosenbrockContext", "LogisticRegression", "RidgeRegression",
    "RobustRegression", "RegressionContext", "MLPClassifier", "ClassificationContext", "Lasso", "LassoContext",
    "soft_threshold", "load_dataset",
]

from .qp import MPCQP, PortfolioQP, QPData, QPProblem, QPStart, RandomQP, make_qp_data  # noqa: E402

__all__ += ["QPProblem", "QPData", "QPStart", "RandomQP", "PortfolioQP", "MPCQP", "make_qp_data"]

from .ot import DigitsOT, EntropicOT, OTContext, SphereOT  # noqa: E402

__all__ += ["EntropicOT", "OTContext", "DigitsOT", "SphereOT"]

from .mixtures import (  # noqa: E402  (issue 15: the families of Li & Malik)
    MixtureLogisticRegression,
    MixtureMLPClassifier,
    MixtureRobustRegression,
    gaussian_mixture,
)

__all__ += ["MixtureLogisticRegression", "MixtureRobustRegression", "MixtureMLPClassifier", "gaussian_mixture"]
