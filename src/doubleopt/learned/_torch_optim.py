r"""``TorchOptimizer``: a learned optimizer as a real ``torch.optim.Optimizer``.

Each parameter tensor is one optimizee instance (``B = 1``, ``n = numel``), so per-tensor feature
normalization (MLP optimizer) is per parameter tensor, as in ``learned_optimization``. The learned
optimizer's per-coordinate state is stored in ``self.state[p]`` as plain tensors, so
``state_dict`` / ``load_state_dict`` work as for any torch optimizer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ._base import LearnedOptimizer


class TorchOptimizer(torch.optim.Optimizer):
    r"""Use a (meta-trained) learned optimizer in an ordinary PyTorch training loop.

    The update of parameter :math:`p` is :math:`p \leftarrow p + \eta\, \Delta`, where :math:`\Delta` is the
    learned optimizer's update for the gradient ``p.grad`` and :math:`\eta` is the group's ``lr`` multiplier
    (default 1: the update exactly as meta-trained).

    All updates of a step are computed first; if a gradient or an update is non-finite a ``FloatingPointError``
    naming the parameter is raised and neither the model nor the optimizer state is modified.

    Args:
        params: an iterable of parameters, of ``(name, parameter)`` pairs (``model.named_parameters()``; the
            names then appear in error messages), or of param-group dicts.
        lopt: the learned optimizer (its weights are not trained by this optimizer).
        lr: update multiplier :math:`\eta`.

    Example:
        >>> import torch, doubleopt as do
        >>> model = torch.nn.Linear(4, 1)
        >>> opt = do.learned.TorchOptimizer(model.parameters(), do.learned.load_pretrained("mlp-digits"))
        >>> loss = model(torch.randn(8, 4)).pow(2).mean()
        >>> loss.backward(); opt.step(); opt.zero_grad()
    """

    def __init__(self, params: Iterable[Any], lopt: LearnedOptimizer, lr: float = 1.0):
        if not isinstance(lopt, LearnedOptimizer):
            raise TypeError(f"lopt must be a doubleopt.learned.LearnedOptimizer, got {type(lopt).__name__}")
        if not lopt.gradient_only:
            raise TypeError(
                f"{type(lopt).__name__} needs objective values as well as gradients, which torch.optim's "
                "interface does not give per parameter; run it with do.solve(problem, lopt.as_solver(), ...)"
            )
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not 0 < lr < float("inf"):
            raise ValueError(f"lr must be > 0 and finite, got {lr!r}")
        super().__init__(params, {"lr": lr})
        self.lopt = lopt
        for p in lopt.parameters():
            p.requires_grad_(False)

    def _name(self, group: dict, gi: int, i: int, p: Tensor) -> str:
        names = group.get("param_names")
        if names:
            return f"{names[i]!r}"
        return f"#{i} of param group {gi} (shape {tuple(p.shape)})"

    def _rule_state(self, p: Tensor, y: Tensor) -> Any:
        st = self.state[p]
        template = self.lopt.init_state(y)
        if not st:
            return template
        return dataclasses.replace(template, **{f.name: st[f.name] for f in dataclasses.fields(template)})

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns the closure's loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        pending = []
        for gi, group in enumerate(self.param_groups):
            for i, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("TorchOptimizer does not support sparse gradients")
                dtype = next(self.lopt.parameters()).dtype
                y = p.detach().reshape(1, -1).to(dtype)
                g = p.grad.detach().reshape(1, -1).to(dtype)
                if not bool(torch.isfinite(g).all()):  # a learned update may squash inf into a finite step
                    raise FloatingPointError(
                        f"TorchOptimizer: the gradient of parameter {self._name(group, gi, i, p)} is non-finite "
                        "(NaN or inf); no parameter was changed. Check the loss (or skip this step)."
                    )
                delta, new_state = self.lopt.update(g, self._rule_state(p, y), y)
                delta = group["lr"] * delta
                if not bool(torch.isfinite(delta).all()):
                    raise FloatingPointError(
                        f"TorchOptimizer: the learned update of parameter {self._name(group, gi, i, p)} is "
                        "non-finite (NaN or inf); no parameter was changed. Check the loss and gradients "
                        f"(gradient finite: {bool(torch.isfinite(p.grad).all())})."
                    )
                pending.append((p, delta.reshape(p.shape).to(p.dtype), new_state))
        for p, delta, new_state in pending:
            p.add_(delta)
            self.state[p] = {f.name: getattr(new_state, f.name) for f in dataclasses.fields(new_state)}
        return loss
