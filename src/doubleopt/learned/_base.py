r"""The learned-optimizer base class and its solver.

A learned optimizer is an ``nn.Module`` implementing a coordinatewise update rule

.. math:: (\Delta\theta_t, h_{t+1}) = m_\phi(\nabla f(\theta_t), h_t, \theta_t), \qquad
          \theta_{t+1} = \theta_t + \Delta\theta_t,

with meta-parameters :math:`\phi` shared by every coordinate and a per-coordinate hidden state
:math:`h_t` that lives in a rule-state dataclass (batched, leading dim ``B``).
:meth:`LearnedOptimizer.as_solver`
wraps it in the core adapter :class:`~doubleopt.solvers.GradientRuleSolver`, so :func:`doubleopt.solve`, its
result codes and its adjoints work with it unchanged (DESIGN principle 7).

Weights are stored as safetensors with the architecture in the metadata; :meth:`LearnedOptimizer.load_weights`
checks names and shapes and names the mismatched tensor.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..solvers import GradientRuleSolver, RuleState


class LearnedOptimizer(nn.Module):
    """Base class: subclasses set ``arch``, implement :meth:`init_state`, :meth:`update`, :meth:`config`."""

    arch: str = "base"
    # the update needs only gradients (init_state / update), so torch.optim's interface can drive it
    gradient_only: bool = True

    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-serializable) that rebuild this architecture."""
        raise NotImplementedError

    def init_state(self, y: Tensor) -> Any:
        """The initial per-coordinate state for iterates ``y`` of shape ``(B, n)``."""
        raise NotImplementedError

    def update(self, grad: Tensor, state: Any, y: Tensor) -> tuple[Tensor, Any]:
        """``(delta (B, n), new_state)`` from gradients ``grad (B, n)`` at ``y``."""
        raise NotImplementedError

    def as_solver(self, *, detach_grad: bool = False) -> LearnedSolver:
        """This optimizer as a :class:`~doubleopt.solvers.Solver` for :func:`doubleopt.solve`.

        Args:
            detach_grad: treat the optimizee gradient as a constant input (no second derivatives of the
                optimizee flow into meta-gradients; the simplification of Andrychowicz et al. 2016, Sec. 2.1).

        Example:
            >>> import torch, doubleopt as do
            >>> lopt = do.learned.LSTMOptimizer()
            >>> fam = do.learned.QuadraticRegression()
            >>> sol = do.solve(fam, lopt.as_solver(), fam.sample(3, seed=0), max_steps=5, throw=False)
            >>> sol.y.shape
            torch.Size([3, 10])
        """
        return LearnedSolver(optimizer=self, detach_grad=detach_grad)

    # ---- weights -----------------------------------------------------------------------------
    def save_weights(self, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
        """Write the weights atomically (temp file + ``os.replace``) as safetensors with the architecture."""
        path = Path(path)
        meta = {"arch": self.arch, "config": json.dumps(self.config())}
        meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()})
        tensors = {k: v.detach().contiguous().clone() for k, v in self.state_dict().items()}
        atomic_save(tensors, path, meta)
        return path

    def load_weights(self, path: str | os.PathLike) -> LearnedOptimizer:
        """Load weights saved by :meth:`save_weights`; raise ``ValueError`` naming any mismatched tensor."""
        meta, tensors = read_safetensors(path, "weights")
        load_checked(self, tensors, source=str(path), file_arch=meta.get("arch"))
        return self


def load_checked(module: LearnedOptimizer, tensors: dict[str, Tensor], *, source: str, file_arch: str | None) -> None:
    """Copy ``tensors`` into ``module`` after checking every name and shape (errors name the tensor)."""
    own = module.state_dict()
    where = f"{source} (architecture {file_arch!r})" if file_arch else source
    for name, t in own.items():
        if name not in tensors:
            raise ValueError(
                f"cannot load {where} into {type(module).__name__}: tensor {name!r} "
                f"(shape {tuple(t.shape)}) is missing from the file"
            )
        if tuple(tensors[name].shape) != tuple(t.shape):
            raise ValueError(
                f"cannot load {where} into {type(module).__name__}: tensor {name!r} has shape "
                f"{tuple(tensors[name].shape)} in the file but {tuple(t.shape)} in the model"
            )
    extra = sorted(set(tensors) - set(own))
    if extra:
        raise ValueError(
            f"cannot load {where} into {type(module).__name__}: the file has tensor {extra[0]!r} "
            f"that the model does not have ({len(extra)} unexpected tensors)"
        )
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in tensors.items()})


def read_safetensors(
    path: str | os.PathLike, what: str = "file", *, tensors: bool = True
) -> tuple[dict[str, str], dict[str, Tensor]]:
    """``(metadata, tensors)`` of a safetensors file, read without pickle.

    Every failure names the file: ``FileNotFoundError`` when there is none at ``path`` (or it is a folder), and
    ``ValueError`` when it is not a readable safetensors file (empty, truncated, corrupt or another format).
    ``tensors=False`` reads the header only (the metadata) and returns an empty dict of tensors.

    Example:
        >>> import tempfile, pathlib, torch
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "w.safetensors"
        >>> atomic_save({"a": torch.ones(2)}, p, {"arch": "demo"})
        >>> read_safetensors(p, "weights")[0]["arch"]
        'demo'
    """
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no {what} file at {p}" + (" (it is a folder)" if p.is_dir() else ""))
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            out = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
    except (SafetensorError, OSError) as e:
        raise ValueError(
            f"cannot read the {what} file {p}: not a valid safetensors file (empty, truncated or corrupt?): {e}"
        ) from None
    return meta, out


def atomic_save(tensors: dict[str, Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors ``save_file`` to a temporary file in the same folder, then ``os.replace``."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; weights are ordinary readable files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@dataclass(frozen=True)
class LearnedSolver(GradientRuleSolver):
    """The solver of a :class:`LearnedOptimizer`: one gradient per step, the update from the module.

    State: :class:`~doubleopt.solvers.RuleState` whose ``rule`` field is the optimizer's per-coordinate
    state dataclass. Meta-training drives :meth:`step` with a fresh context every step (see
    :mod:`doubleopt.learned.meta`).
    """

    optimizer: LearnedOptimizer = field(default=None, compare=False)  # type: ignore[assignment]
    detach_grad: bool = False

    def __post_init__(self):
        if not isinstance(self.optimizer, LearnedOptimizer):
            raise TypeError(f"LearnedSolver needs a LearnedOptimizer, got {type(self.optimizer).__name__}")

    def init_rule(self, y):
        return self.optimizer.init_state(y)

    def update(self, grad, rule_state, y):
        if self.detach_grad:
            grad = grad.detach()
        return self.optimizer.update(grad, rule_state, y)

    def step(self, problem, y, x, state):
        delta, rule_state = self.update(state.grad, state.rule, y)
        y = y + delta
        if self.detach_grad:
            # the optimizee gradient is a constant input: evaluate it without a second-order graph
            with torch.no_grad():
                value, grad = problem.value_and_grad(y.detach(), x)
        else:
            value, grad = problem.value_and_grad(y, x)
        return y, RuleState(value, grad, rule_state)
