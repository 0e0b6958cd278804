"""K independent networks as one: stacked parameters, batched matmuls, and Adam with per-agent step sizes.

A run of ``K`` agents (seeds, or points of a hyperparameter sweep) keeps every weight matrix as one tensor
of shape ``(K, fan_in, fan_out)``: a layer is one ``baddbmm`` for all agents, the losses are summed over
agents (each agent's gradient is exactly its own loss's gradient: the agents share no parameter), and
:class:`StackedAdam` is ``torch.optim.Adam`` applied to each agent's slice with that agent's step size and
only where that agent updates. Agent ``k`` of a stacked run therefore computes what the same agent trained
alone computes (tested to 1e-6 in float64).

Example:
    >>> import torch
    >>> gens = agent_generators([0, 1, 2])
    >>> net = StackedMLP(3, [4, 16, 1], gens)
    >>> net(torch.randn(3, 10, 4)).shape
    torch.Size([3, 10, 1])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

_ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh}


def agent_generators(seeds: Sequence[int], stream: int = 0) -> list[torch.Generator]:
    """One CPU generator per agent, seeded from ``(seed, stream)`` so that agent streams never depend on K."""
    gens = []
    for s in seeds:
        g = torch.Generator()
        g.manual_seed(int(s) * 1_000_003 + stream)
        gens.append(g)
    return gens


class StackedMLP(nn.Module):
    """``members`` independent MLPs with the same layer sizes: ``x (members, N, in) -> (members, N, out)``.

    All weights and biases of a member are one row of a single parameter ``flat`` of shape
    ``(members, P)``; each layer's weight is a view ``(members, fan_in, fan_out)`` of it, so a layer is one
    ``baddbmm`` for all members, the gradient is one tensor, and an optimizer or a target update is a
    handful of whole-tensor operations.

    Each member is initialised like ``torch.nn.Linear`` (weights, then bias, of each layer uniform in
    ``+-1/sqrt(fan_in)``) from its own generator, ``generators[i // (members // len(generators))]``: with
    twin critics two consecutive members belong to one agent and draw from its generator in order.

    Args:
        members: number of stacked networks (agents, or agents x twins).
        sizes: ``[in, hidden..., out]``.
        generators: one generator per agent (``members`` must be a multiple of their number).
        activation: hidden activation, ``"relu"`` or ``"tanh"``.
        dtype: parameter dtype.
    """

    def __init__(
        self,
        members: int,
        sizes: Sequence[int],
        generators: Sequence[torch.Generator],
        activation: str = "relu",
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        if members % len(generators):
            raise ValueError(f"{members} members cannot be split over {len(generators)} agents")
        self.members, self.sizes, self.activation = members, tuple(int(s) for s in sizes), activation
        self.layout: list[tuple[int, int, int, int]] = []  # (offset, fan_in, fan_out) of each weight, bias after it
        offset = 0
        for fan_in, fan_out in zip(self.sizes[:-1], self.sizes[1:]):
            self.layout.append((offset, fan_in, fan_out, offset + fan_in * fan_out))
            offset += fan_in * fan_out + fan_out
        per_agent = members // len(generators)
        rows = []
        for m in range(members):
            g = generators[m // per_agent]
            parts = []
            for _, fan_in, fan_out, _ in self.layout:
                bound = 1.0 / math.sqrt(fan_in)
                w = torch.rand(fan_out, fan_in, generator=g, dtype=torch.float64) * 2 * bound - bound
                b = torch.rand(fan_out, generator=g, dtype=torch.float64) * 2 * bound - bound
                parts += [w.T.reshape(-1), b]
            rows.append(torch.cat(parts))
        self.flat = nn.Parameter(torch.stack(rows).to(dtype).contiguous())

    @property
    def num_parameters(self) -> int:
        """Parameters per member."""
        return self.flat.shape[1]

    def layer(self, i: int, members: slice | None = None) -> tuple[Tensor, Tensor]:
        """Weight ``(members, fan_in, fan_out)`` and bias ``(members, 1, fan_out)`` of layer ``i`` (views)."""
        w_off, fan_in, fan_out, b_off = self.layout[i]
        flat = self.flat if members is None else self.flat[members]
        m = flat.shape[0]
        return (flat[:, w_off:b_off].view(m, fan_in, fan_out), flat[:, b_off : b_off + fan_out].view(m, 1, fan_out))

    def forward(self, x: Tensor, members: slice | None = None) -> Tensor:
        """Apply the stack (or the members selected by ``members``, e.g. ``slice(0, None, 2)``).

        The layers are views from one ``split`` of ``flat``, so the backward pass assembles the gradient with
        one concatenation (slicing layer by layer would zero-fill a full-size gradient per slice and add them).
        """
        act = _ACTIVATIONS[self.activation]
        flat = self.flat if members is None else self.flat[members]
        m = flat.shape[0]
        pieces = flat.split([n for _, fan_in, fan_out, _ in self.layout for n in (fan_in * fan_out, fan_out)], dim=1)
        last = len(self.layout) - 1
        for i, (_, fan_in, fan_out, _) in enumerate(self.layout):
            w, b = pieces[2 * i].view(m, fan_in, fan_out), pieces[2 * i + 1].view(m, 1, fan_out)
            x = torch.baddbmm(b, x, w)
            if i < last:
                x = act(x)
        return x

    def extra_repr(self) -> str:
        return f"members={self.members}, sizes={list(self.sizes)}, activation={self.activation!r}"


class StackedAdam:
    """Adam on stacked parameters, one step size and one step count per agent, masked updates.

    For each agent ``k`` with ``mask[k]`` true (and only those), with ``t_k`` its own step count:

    .. math::
        m \\leftarrow \\beta_1 m + (1-\\beta_1) g,\\quad v \\leftarrow \\beta_2 v + (1-\\beta_2) g^2,\\quad
        \\theta \\leftarrow \\theta - \\frac{\\alpha_k}{1-\\beta_1^{t_k}}
        \\frac{m}{\\sqrt{v}/\\sqrt{1-\\beta_2^{t_k}} + \\epsilon}

    which is ``torch.optim.Adam`` (``amsgrad=False``, no weight decay) agent by agent (tested).
    Agents whose mask is false keep their parameters, moments and step count untouched.

    Args:
        params: stacked parameters whose leading dimension is ``agents * members_per_agent`` (the
            members of one agent consecutive, as in :class:`StackedMLP`).
        lr: step size per agent, shape ``(K,)`` (a float is broadcast).
        agents: ``K``.
        betas (tuple[float, float]): as in ``torch.optim.Adam``.
        eps (float): as in ``torch.optim.Adam``.
    """

    def __init__(self, params: Sequence[Tensor], lr: Tensor | float, agents: int, betas=(0.9, 0.999), eps=1e-8):
        self.params = list(params)
        self.agents = agents
        self.lr = torch.as_tensor(lr, dtype=torch.float64).expand(agents).clone()
        self.betas, self.eps = betas, eps
        self.step_count = torch.zeros(agents, dtype=torch.float64)
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]

    def _by_agent(self, t: Tensor) -> Tensor:
        """View a stacked tensor as ``(K, everything else)`` (members of an agent are consecutive rows)."""
        return t.view(self.agents, -1)

    @torch.no_grad()
    def step(self, grads: Sequence[Tensor], mask: Tensor | None = None) -> None:
        b1, b2 = self.betas
        if mask is None:
            self.step_count += 1
        else:
            self.step_count = torch.where(mask, self.step_count + 1, self.step_count)
        t = torch.clamp(self.step_count, min=1)  # agents with no step yet are masked out anyway
        dtype = self.params[0].dtype
        step_size = (self.lr / (1 - b1**t)).to(dtype).unsqueeze(1)
        bc2_sqrt = torch.sqrt(1 - b2**t).to(dtype).unsqueeze(1)
        keep = None if mask is None else mask.unsqueeze(1)
        if keep is None and self._fusable(grads):
            self._fused_step(grads)
            return
        for p, g, m, v in zip(self.params, grads, self.exp_avg, self.exp_avg_sq):
            p, g, m, v = self._by_agent(p), self._by_agent(g), self._by_agent(m), self._by_agent(v)
            if keep is None:
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                update = v.sqrt().div_(bc2_sqrt).add_(self.eps)  # one temporary: denominator, then the step
                p.sub_(update.reciprocal_().mul_(m).mul_(step_size))
            else:
                m_new = torch.lerp(m, g, 1 - b1)
                v_new = v * b2 + (1 - b2) * g * g
                p_new = p - step_size * m_new / (v_new.sqrt() / bc2_sqrt + self.eps)
                m.copy_(torch.where(keep, m_new, m))
                v.copy_(torch.where(keep, v_new, v))
                p.copy_(torch.where(keep, p_new, p))

    def _fusable(self, grads: Sequence[Tensor]) -> bool:
        return all(
            t.is_contiguous() and t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)
            for t in (*self.params, *grads)
        )

    def _fused_step(self, grads: Sequence[Tensor]) -> None:
        """The unmasked step with PyTorch's fused Adam kernel (``torch.optim.Adam(fused=True)``), agent by agent rows
        so each agent has its own step count; one call for all agents when they share the step size."""
        b1, b2 = self.betas
        rows = [
            [t for x in group for t in self._by_agent(x).unbind(0)]
            for group in (self.params, grads, self.exp_avg, self.exp_avg_sq)
        ]
        steps = [t for _ in self.params for t in self.step_count.unbind(0)]  # the kernel reads t_k, we count it
        n = len(self.params)
        lrs = self.lr.tolist()
        if all(lr == lrs[0] for lr in lrs):
            calls = [(list(range(n * self.agents)), lrs[0])]
        else:
            calls = [([j * self.agents + k for j in range(n)], lrs[k]) for k in range(self.agents)]
        for idx, lr in calls:
            torch._fused_adam_(
                *([group[i] for i in idx] for group in rows),
                [],
                [steps[i] for i in idx],
                lr=lr,
                beta1=b1,
                beta2=b2,
                weight_decay=0.0,
                eps=self.eps,
                amsgrad=False,
                maximize=False,
            )

    def state_tensors(self, prefix: str) -> dict[str, Tensor]:
        out = {f"{prefix}.step_count": self.step_count, f"{prefix}.lr": self.lr}
        for i, (m, v) in enumerate(zip(self.exp_avg, self.exp_avg_sq)):
            out[f"{prefix}.exp_avg.{i}"] = m
            out[f"{prefix}.exp_avg_sq.{i}"] = v
        return out

    def load_state_tensors(self, tensors: dict[str, Tensor], prefix: str) -> None:
        self.step_count = tensors[f"{prefix}.step_count"].clone()
        self.lr = tensors[f"{prefix}.lr"].clone()
        for i in range(len(self.exp_avg)):
            self.exp_avg[i].copy_(tensors[f"{prefix}.exp_avg.{i}"])
            self.exp_avg_sq[i].copy_(tensors[f"{prefix}.exp_avg_sq.{i}"])


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float, mask: Tensor | None = None, agents: int = 1) -> None:
    """Polyak averaging ``target <- (1 - tau) target + tau source`` (only agents where ``mask``)."""
    for pt, ps in zip(target.parameters(), source.parameters()):
        if mask is None:
            pt.lerp_(ps, tau)
        else:
            pt_k, ps_k = pt.view(agents, -1), ps.view(agents, -1)
            pt_k.copy_(torch.where(mask.unsqueeze(1), torch.lerp(pt_k, ps_k, tau), pt_k))
