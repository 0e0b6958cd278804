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
