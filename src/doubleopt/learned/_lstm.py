r"""The coordinatewise LSTM optimizer of Andrychowicz et al. (2016).

Every coordinate :math:`i` of every instance runs the same two-layer LSTM (20 hidden units by default) on
its own preprocessed gradient; the output, times a fixed scale, is the update:

.. math::
    \rho(g) = \begin{cases} (\log|g| / p,\ \mathrm{sgn}(g)) & |g| \ge e^{-p} \\
              (-1,\ e^{p} g) & \text{otherwise}
    \end{cases}, \qquad
    (o_{t,i}, h_{t+1,i}) = \mathrm{LSTM}_\phi(\rho(g_{t,i}), h_{t,i}), \qquad
    \theta_{t+1,i} = \theta_{t,i} + \alpha\, W o_{t,i}

with :math:`p = 10` and output scale :math:`\alpha = 0.1` (the paper's choices, its Appendix A).

Reference:
    M. Andrychowicz, M. Denil, S. Gomez, M. W. Hoffman, D. Pfau, T. Schaul, B. Shillingford, N. de Freitas,
    "Learning to learn by gradient descent by gradient descent", NeurIPS 2016.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ._base import LearnedOptimizer


@dataclass
class LSTMState:
    """Per-coordinate LSTM state, each ``(B, n, hidden)``."""

    h1: Tensor
    c1: Tensor
    h2: Tensor
    c2: Tensor


def preprocess_gradient(g: Tensor, p: float = 10.0) -> Tensor:
    r"""The paper's log-magnitude / sign preprocessing, ``(..., 2)``; differentiable in ``g``."""
    big = g.abs() >= math.exp(-p)
    logmag = torch.log(g.abs().clamp_min(math.exp(-p))) / p
    first = torch.where(big, logmag, torch.full_like(g, -1.0))
    second = torch.where(big, torch.sign(g), math.exp(p) * g)
    return torch.stack([first, second], dim=-1)


class LSTMOptimizer(LearnedOptimizer):
    r"""Coordinatewise two-layer LSTM optimizer (Andrychowicz et al. 2016).

    Args:
        hidden: LSTM hidden units per layer (paper: 20).
        preprocess_p: the preprocessing constant :math:`p` (paper: 10).
        output_scale: :math:`\alpha` multiplying the LSTM output (paper: 0.1).

    Example:
        >>> import torch, doubleopt as do
        >>> lopt = do.learned.load_pretrained("lstm-digits")
        >>> fam = do.problems.MLPClassifier(hidden=(20,), split="test")
        >>> x = fam.sample(4, seed=0)
        >>> sol = do.solve(fam, lopt.as_solver(), x, fam.init(x), max_steps=50, throw=False)
        >>> bool((sol.value < fam.objective(fam.init(x), x)).all())
        True
    """

    arch = "lstm"

    def __init__(self, hidden: int = 20, preprocess_p: float = 10.0, output_scale: float = 0.1):
        super().__init__()
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden}")
        self.hidden, self.preprocess_p, self.output_scale = (
            int(hidden),
            float(preprocess_p),
            float(output_scale),
        )
        self.cell1 = nn.LSTMCell(2, self.hidden)
        self.cell2 = nn.LSTMCell(self.hidden, self.hidden)
        self.out = nn.Linear(self.hidden, 1)
        with torch.no_grad():  # start close to a small sign-gradient-like step
            self.out.weight.mul_(0.1)
            self.out.bias.zero_()

    def config(self):
        return {"hidden": self.hidden, "preprocess_p": self.preprocess_p, "output_scale": self.output_scale}

    def init_state(self, y: Tensor) -> LSTMState:
        # the state has the module's dtype (a float32 optimizer can drive a float64 problem)
        z = torch.zeros(*y.shape, self.hidden, dtype=self.out.weight.dtype, device=y.device)
        return LSTMState(z, z, z, z)

    def update(self, grad: Tensor, state: LSTMState, y: Tensor) -> tuple[Tensor, LSTMState]:
        B, n = grad.shape
        H = self.hidden
        inp = preprocess_gradient(grad, self.preprocess_p).reshape(B * n, 2).to(self.out.weight.dtype)
        h1, c1 = self.cell1(inp, (state.h1.reshape(B * n, H), state.c1.reshape(B * n, H)))
        h2, c2 = self.cell2(h1, (state.h2.reshape(B * n, H), state.c2.reshape(B * n, H)))
        delta = self.output_scale * self.out(h2).reshape(B, n)
        shape = (B, n, H)
        return delta.to(grad.dtype), LSTMState(
            h1.reshape(shape), c1.reshape(shape), h2.reshape(shape), c2.reshape(shape)
        )
