"""The third-party baselines of the studies, imported through one function, :func:`require`.

The studies compare doubleopt with other libraries (qpth, cvxpylayers, POT, Stable-Baselines3, TorchOpt, OSQP).
Those are not dependencies of doubleopt: they come with the ``bench`` extra, ``pip install 'doubleopt[bench]'``,
except qpth, whose ``numpy<2`` pin is wrong (it runs on numpy 2) and which is installed on its own with
``pip install --no-deps qpth==0.0.18``. A study calls :func:`require` for each baseline it is about to use, at
its start (before any long computation), and gets the module back; a baseline that is missing (or installed but
unable to import) raises ``MissingBaseline``, which ``doubleopt bench`` reports as one line naming the
package and the command that installs it, with exit code 2 and no traceback.

Example:
    >>> from doubleopt.bench.baselines import require
    >>> ot = require("ot", "the Sinkhorn baseline of the meta_ot study")  # POT, from the bench extra
    >>> ot.sinkhorn is not None
    True
"""

from __future__ import annotations

import importlib
from types import ModuleType

EXTRA = "pip install 'doubleopt[bench]'"

# top-level import name -> (distribution name on PyPI, the command that installs it)
INSTALL: dict[str, tuple[str, str]] = {
    "qpth": ("qpth", "pip install --no-deps qpth==0.0.18 (its numpy<2 pin is wrong: it runs on numpy 2)"),
    "cvxpy": ("cvxpy", EXTRA),
    "cvxpylayers": ("cvxpylayers", EXTRA),
    "ot": ("POT", EXTRA),
    "stable_baselines3": ("stable-baselines3", EXTRA),
    "torchopt": ("torchopt", EXTRA),
    "osqp": ("osqp", EXTRA),
}


class MissingBaseline(ImportError):
    """A baseline a study needs is not installed, or is installed but fails to import. Its message is one line
    that names the package and the command that installs it; ``doubleopt bench`` prints it and exits with 2."""


def require(module: str, used_for: str) -> ModuleType:
    """Import the baseline module ``module`` (e.g. ``"qpth.qp"``) and return it.

    Args:
        module: the dotted module to import; its top-level package must be one of ``INSTALL``.
        used_for: what the study uses it for, shown in the message (``"the OptNet baseline of the qp study"``).

    Returns:
        The imported module.

    Raises:
        MissingBaseline: the package is not installed (``"qpth is not installed (...): pip install ..."``), or one
            of its own imports fails (``"qpth is installed but does not import (...): ..."``); the import error
            is chained as the cause.
        ValueError: ``module`` is not in a known baseline package (a study's mistake, not the user's).

    Example:
        >>> QPFunction = require("qpth.qp", "the OptNet baseline of the qp study").QPFunction
    """
    top = module.split(".", 1)[0]
    if top not in INSTALL:
        raise ValueError(f"require: {top!r} is not a known baseline package; known: {', '.join(INSTALL)}")
    dist, install = INSTALL[top]
    try:
        return importlib.import_module(module)
    except ImportError as err:
        missing = getattr(err, "name", None)
        if missing is not None and (missing == top or module.startswith(missing + ".") or missing == module):
            raise MissingBaseline(f"{dist} is not installed ({used_for}): {install}", name=top) from err
        reason = " ".join(str(err).split())
        raise MissingBaseline(
            f"{dist} is installed but does not import ({used_for}): {reason}; reinstall it: {install}", name=top
        ) from err
