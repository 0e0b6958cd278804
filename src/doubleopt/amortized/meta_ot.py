r"""Meta OT (Amos, Cohen, Luise & Redko 2023): predict the entropic OT dual potential from the two measures.

:class:`PotentialMLP` maps a context :math:`(a, b)` to :math:`\hat f_\theta(a, b) \in \mathbb{R}^n`; the other
potential is its soft :math:`c`-transform :math:`g(\hat f)`. It is trained with the objective loss, i.e. by
maximizing the entropic dual
:math:`\mathbb{E}_{(a,b)}[\langle \hat f, a\rangle + \langle g(\hat f), b\rangle]`
(``do.amortized.fit(FullyAmortized(model), family, loss="objective")``; no solved pairs are needed), and
used to warm-start Sinkhorn: ``SemiAmortized(model, do.solvers.Sinkhorn(), steps=k)`` or, certified,
``Safeguarded(FullyAmortized(model), MarginalError(), Sinkhorn(), tol)``.

The objective loss is least sensitive to the error along the dual's flattest directions (small Hessian
eigenvalues), which are exactly Sinkhorn's slow modes, the ones that decide how many refinement steps a warm
start needs to reach a tight tolerance. A second phase of regression to converged potentials
(``fit(..., loss="regression", reference=Sinkhorn(), train_size=N)``: solved once and cached) weights every
direction the same; on digits it cut the mean refinement steps to marginal error 1e-4 from 128 to 112 (cold:
191). The network predicts the centred potential (``f - mean(f)``; the dual is invariant to ``f + c``), so
the regression fits no arbitrary constant.

Two options that target what a warm start is measured by, the Sinkhorn steps that remain:

* *Objective after k refinement steps* (``fit(SemiAmortized(model, Sinkhorn(loop_compact_below=0), steps=k),
  family, loss="objective")``): the loss is :math:`F(T^k(\hat f))`, the dual after ``k`` Sinkhorn steps from
  the prediction, differentiated through the steps. Sinkhorn removes the error's fast modes in a few steps
  whatever the start, so :math:`F(T^k(\hat f)) - F^\star` is made of the slow modes' error only, the part the
  refinement would spend its steps on; the plain objective loss spends the network's capacity on all modes
  alike (weighted by the Hessian). Sphere, 300 held-out pairs, mean steps to marginal error 1e-2: 116 after
  12000 objective steps, 104 after 3000 more with ``k = 50`` (cold: 229; ``k = 20``: 118 from a
  3000-step objective model, against 127 with the plain objective for the same extra steps; ``k = 100`` did
  not beat ``k = 50``).
* :class:`SwapAveraged`: for a symmetric cost, average the prediction with the one for the swapped pair.

Example:
    >>> import torch, doubleopt as do
    >>> fam = do.problems.DigitsOT(split="train")
    >>> model = do.amortized.PotentialMLP(fam.n, fam.m, hidden=64)
    >>> res = do.amortized.fit(do.amortized.FullyAmortized(model), fam, steps=20, progress=False)
    >>> model(fam.sample(2, seed=0)).shape
    torch.Size([2, 64])
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..problems.ot import OTContext


class PotentialMLP(nn.Module):
    """MLP ``[n a, m b] -> f`` (inputs scaled to O(1)); ``dtype`` defaults to float64 like the OT families.

    Args:
        n: support size of the first measure.
        m: support size of the second measure.
        hidden: width of the hidden layers.
        layers: number of hidden layers.
    """

    def __init__(self, n: int, m: int, hidden: int = 512, layers: int = 2, dtype: torch.dtype = torch.float64):
        super().__init__()
        dims = [n + m] + [hidden] * layers
        mods: list[nn.Module] = []
        for i in range(layers):
            mods += [nn.Linear(dims[i], dims[i + 1]), nn.ELU()]
        mods.append(nn.Linear(dims[-1], n))
        self.net = nn.Sequential(*mods).to(dtype)
        self.n, self.m = n, m

    def forward(self, x: OTContext) -> Tensor:
        if not isinstance(x, OTContext):
            raise ValueError(f"PotentialMLP expects an OTContext(a, b), got {type(x).__name__}")
        if x.a.shape[-1] != self.n or x.b.shape[-1] != self.m:
            raise ValueError(
                f"PotentialMLP was built for n={self.n}, m={self.m}; got a {tuple(x.a.shape)}, b {tuple(x.b.shape)}"
            )
        inp = torch.cat([x.a * self.n, x.b * self.m], dim=-1).to(self.net[0].weight.dtype)
        f = self.net(inp).to(x.a.dtype)
        # the dual is invariant to f + c (g - c): predict the centred representative, so a regression loss to
        # (any gauge of) reference potentials fits only what matters and the objective loss is unchanged
        return f - f.mean(-1, keepdim=True)


class ZeroPotential(nn.Module):
    """The cold start ``f = 0`` as a model: ``Safeguarded(FullyAmortized(ZeroPotential(n)), ...)`` is plain
    Sinkhorn from scratch with the same per-instance certificate and compaction rounds (a fair baseline)."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def forward(self, x: OTContext) -> Tensor:
        return torch.zeros(x.a.shape[0], self.n, dtype=x.a.dtype, device=x.a.device)


class SwapAveraged(nn.Module):
    r"""Average a potential model's prediction for :math:`(a, b)` with the one it makes for :math:`(b, a)`.

    For a symmetric cost on one support (:math:`C = C^\top`), the dual potentials of OT(b, a) are those of
    OT(a, b) swapped, :math:`(g^\star, f^\star)`. So :math:`\hat g = \text{model}(b, a)` predicts
    :math:`g^\star`, and one Sinkhorn half-step turns it into a second prediction of :math:`f^\star`:

    .. math:: T_a(\hat g)_i = \varepsilon \log a_i - \varepsilon \log \sum_j e^{(\hat g_j - C_{ij})/\varepsilon},
        \qquad \text{output} = \tfrac12\big[\hat f + \bar T_a(\hat g)\big]

    (:math:`\bar{\cdot}`: centred, like :class:`PotentialMLP`'s output; :math:`T_a(g^\star) = f^\star` up to the
    gauge, so exact predictions stay exact). The two predictions' errors are partly independent, so the
    average is closer to :math:`f^\star`: sphere, 300 held-out pairs, mean Sinkhorn steps to marginal error
    1e-2 from the warm start 103.9 -> 100.1 with the same network (cold: 229), and 94.6 after 3000 more steps
    of training through it (the dual after 50 Sinkhorn steps). It costs a second forward pass and one
    soft-min. Train through it (``fit(FullyAmortized(SwapAveraged(model, family)), ...)``) or apply it to a
    trained model; a network trained through it must be used through it (alone it was worse: 1000 held-out
    pairs, mean steps 126 alone, 100 swap-averaged).

    Args:
        model: a potential model (``PotentialMLP``) with ``n == m``.
        family (EntropicOT): the :class:`~doubleopt.problems.EntropicOT` family whose cost and :math:`\varepsilon` give
            :math:`T_a`; its cost must be square and symmetric. It is referenced, not owned (not in
            ``state_dict``; checkpoints hold the model's weights only).
    """

    def __init__(self, model: nn.Module, family):
        super().__init__()
        cost = getattr(family, "cost", None)
        if cost is None or not hasattr(family, "lse_rows"):
            raise ValueError(f"SwapAveraged needs an entropic OT family, got {type(family).__name__}")
        if cost.shape[0] != cost.shape[1] or not torch.allclose(cost, cost.T):
            raise ValueError("SwapAveraged needs a symmetric cost on one support (C = C^T): OT(b, a) is OT(a, b)")
        self.model = model
        object.__setattr__(self, "family", family)  # not a submodule: its buffers stay out of state_dict

    def forward(self, x: OTContext) -> Tensor:
        fam = self.family
        f = self.model(x)
        g = self.model(OTContext(x.b, x.a))
        f2 = fam.eps * (torch.log(x.a) - fam.lse_rows(g))
        f = f - f.mean(-1, keepdim=True)
        return 0.5 * (f + f2 - f2.mean(-1, keepdim=True))
