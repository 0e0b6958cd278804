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
        n, m: support sizes of the two measures.
        hidden: width of the hidden layers; layers: number of hidden layers.
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
