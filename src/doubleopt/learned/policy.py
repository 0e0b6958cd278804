r"""The optimizer as a policy (Li & Malik 2017): a Gaussian policy over the step, fed the recent history.

An optimizer run is an episode of a Markov decision process whose action is the step
:math:`\Delta y_t = y_{t+1} - y_t` (see :mod:`doubleopt.learned.mdp`). The policy sees the last :math:`H` iterates
through scale-free features and is **coordinatewise with shared weights**, so one trained policy applies to
objectives of any dimension (the choice of the follow-up paper, Li & Malik, "Learning to optimize neural nets",
2017; the original paper's policy read the whole history vector of a fixed-dimension family).

**Features** (:class:`PolicyFeatures`) of instance :math:`b`, coordinate :math:`i`, at iterate :math:`t`, with the
running scales :math:`s_g = \max_{\tau \le t} \mathrm{rms}(g_\tau)` and
:math:`s_\Delta = \max_{\tau < t} \mathrm{rms}(\Delta y_\tau)` (root mean square over the coordinates of the
instance, floored at ``eps``):

.. math::
    \hat g_{k,i} = g_{t-k,i} / s_g \ (k = 0..H-1), \qquad
    \hat u_{k,i} = \Delta y_{t-k,i} / s_\Delta \ (k = 1..H), \qquad
    \hat d_k = \frac{f_t - f_{t-k}}{|f_t| + |f_{t-k}| + \epsilon} \ (k = 1..H),

gradients, past steps (changes in location) and relative changes of the objective (bounded in
:math:`[-1, 1]`, broadcast to every coordinate): :math:`3H` numbers per coordinate, ordered
``[g-history, step-history, objective-history]``, most recent first. Multiplying :math:`f` by a constant or
rescaling the steps leaves them unchanged; the running maxima let the gradient features shrink as the run
converges. Before :math:`H` iterates exist the history is padded (zero gradients and steps,
:math:`f_{t-k} = f_0`, so :math:`\hat d_k = 0`).

**Policy** (:class:`PolicyOptimizer`): per coordinate, a Gaussian in units of :math:`\alpha s_g` (``step_scale``
:math:`\alpha` times the gradient scale):

.. math::
    \Delta y_{t,i} = \alpha\, s_g\, u_{t,i}, \qquad u_{t,i} \sim \mathcal N(\mu_\phi(z_{t,i}), \sigma^2), \qquad
    \mu_\phi(z) = w_2^\top \mathrm{softplus}(W_1 z + b_1) + b_2,

one hidden layer of 50 softplus units (the paper's network) and a learnable (or fixed) :math:`\log\sigma`. In
these units gradient descent with step :math:`\alpha` is the linear policy :math:`\mu(z) = -\hat g_0`, so the
policy class contains tuned gradient descent and momentum-like rules. Evaluation uses the mean step.

Reference:
    K. Li, J. Malik, "Learning to optimize", ICLR 2017 (arXiv:1606.01885).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..solvers import RuleState, Solver
from ._base import LearnedOptimizer


@dataclass
class PolicyState:
    """The history of the last ``H`` iterates of ``B`` runs (most recent first)."""

    # objective values f_t, f_{t-1}, ..., f_{t-H}: (B, H + 1)
    values: Tensor
    # gradients g_t, ..., g_{t-H+1}: (B, H, n)
    grads: Tensor
    # steps y_t - y_{t-1}, ..., y_{t-H+1} - y_{t-H}: (B, H, n)
    steps: Tensor
    # running scales s_g (gradient rms) and s_Delta (step rms), (B,) each
    grad_scale: Tensor
    step_scale: Tensor


@dataclass(frozen=True)
class PolicyFeatures:
    """The policy's view of a run: how the history is kept and turned into features (module docstring).

    Args:
        history: :math:`H`, the number of past iterates the features describe.
        eps: floor of the running scales and of the objective-change denominators (guards 0 / 0).

    Example:
        >>> import torch
        >>> feats = PolicyFeatures(history=3)
        >>> s = feats.init(torch.tensor([2.0]), torch.tensor([[1.0, -3.0]]))
        >>> s = feats.push(s, torch.tensor([1.0]), torch.tensor([[0.5, -1.0]]), torch.tensor([[-0.1, 0.3]]))
        >>> feats(s).shape  # (B, n, 3H)
        torch.Size([1, 2, 9])
        >>> feats(s)[0, :, 6]  # (f_1 - f_0) / (|f_1| + |f_0|), on both coordinates
        tensor([-0.3333, -0.3333])
    """

    history: int = 25
    eps: float = 1e-12

    def __post_init__(self):
        if isinstance(self.history, bool) or not isinstance(self.history, int) or self.history < 1:
            raise ValueError(f"history must be an integer >= 1, got {self.history!r}")
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps!r}")

    @property
    def size(self) -> int:
        """Features per coordinate, :math:`3H`."""
        return 3 * self.history

    def _rms(self, v: Tensor) -> Tensor:
        return (v * v).mean(-1).sqrt()

    def init(self, value: Tensor, grad: Tensor) -> PolicyState:
        """The state at the start of a run: ``value (B,)`` and ``grad (B, n)`` at :math:`y_0`."""
        B, n = grad.shape
        H = self.history
        grads = torch.cat([grad[:, None, :], grad.new_zeros(B, H - 1, n)], dim=1)
        return PolicyState(
            values=value[:, None].expand(B, H + 1).clone(),
            grads=grads,
            steps=grad.new_zeros(B, H, n),
            grad_scale=self._rms(grad).clamp_min(self.eps),
            step_scale=grad.new_full((B,), self.eps),
        )

    def push(self, state: PolicyState, value: Tensor, grad: Tensor, step: Tensor) -> PolicyState:
        """The state after the step ``step = y_{t+1} - y_t (B, n)`` to an iterate with ``value`` and ``grad``."""
        return PolicyState(
            values=torch.cat([value[:, None], state.values[:, :-1]], dim=1),
            grads=torch.cat([grad[:, None, :], state.grads[:, :-1]], dim=1),
            steps=torch.cat([step[:, None, :], state.steps[:, :-1]], dim=1),
            grad_scale=torch.maximum(state.grad_scale, self._rms(grad)),
            step_scale=torch.maximum(state.step_scale, self._rms(step)),
        )

    def at(self, values: Tensor, grads: Tensor, iterates: Tensor, run: Tensor, t: Tensor) -> PolicyState:
        """The history of stored runs at chosen steps, as :meth:`init` and :meth:`push` would have built it.

        Args:
            values: ``(R, T + 1)`` objective values of ``R`` runs at iterates ``0..T``.
            grads: ``(R, T + 1, n)`` their gradients.
            iterates: ``(R, T + 1, n)`` the iterates (the steps are their differences).
            run: ``(b,)`` int64, the runs: entry ``j`` is the history of run ``run[j]`` at iterate ``t[j]``.
            t: ``(b,)`` int64, the iterates.

        Example:
            >>> import torch
            >>> feats = PolicyFeatures(history=2)
            >>> y = torch.tensor([[[0.0], [1.0], [3.0]]])
            >>> s = feats.at(y[..., 0] ** 2, 2 * y, y, torch.tensor([0]), torch.tensor([2]))
            >>> s.steps[0, :, 0].tolist(), s.values[0].tolist()
            ([2.0, 1.0], [9.0, 1.0, 0.0])
        """
        H, eps = self.history, self.eps
        back = t[:, None] - torch.arange(H, device=t.device)  # (b, H): t, t-1, ..., t-H+1
        r = run[:, None]
        g = grads[r, back.clamp_min(0)] * (back >= 0)[..., None].to(grads.dtype)
        has_step = (back >= 1)[..., None].to(iterates.dtype)
        steps = (iterates[r, back.clamp_min(1)] - iterates[r, (back - 1).clamp_min(0)]) * has_step
        vals = values[r, (t[:, None] - torch.arange(H + 1, device=t.device)).clamp_min(0)]
        grad_scale = self._rms(grads[run]).cummax(-1).values.gather(1, t[:, None])[:, 0].clamp_min(eps)
        step_rms = self._rms(iterates[run, 1:] - iterates[run, :-1])
        step_rms = torch.cat([step_rms.new_zeros(run.numel(), 1), step_rms], 1)
        step_scale = step_rms.cummax(-1).values.gather(1, t[:, None])[:, 0].clamp_min(eps)
        return PolicyState(values=vals, grads=g, steps=steps, grad_scale=grad_scale, step_scale=step_scale)

    def check(self, state: PolicyState) -> None:
        """``ValueError`` if ``state`` was built for another history length."""
        if state.grads.dim() != 3 or state.grads.shape[1] != self.history:
            raise ValueError(
                f"the policy state holds a history of shape {tuple(state.grads.shape)} (B, H, n) but these "
                f"features use history H = {self.history}"
            )

    def __call__(self, state: PolicyState) -> Tensor:
        """``(B, n, 3H)`` features (module docstring)."""
        self.check(state)
        B, H, n = state.grads.shape
        g = state.grads / state.grad_scale[:, None, None]
        u = state.steps / state.step_scale[:, None, None]
        f_now, f_past = state.values[:, :1], state.values[:, 1:]
        d = (f_now - f_past) / (f_now.abs() + f_past.abs() + self.eps)  # (B, H)
        return torch.cat([g.transpose(1, 2), u.transpose(1, 2), d[:, None, :].expand(B, n, H)], dim=-1)


class PolicyOptimizer(LearnedOptimizer):
    r"""The Li & Malik policy: a coordinatewise Gaussian over the step (module docstring).

    Args:
        history: :math:`H`, past iterates in the features (paper: 25).
        hidden: softplus units of the mean network's hidden layer (paper: 50).
        step_scale: :math:`\alpha`, the step unit relative to the gradient scale :math:`s_g`.
        log_std: initial :math:`\log\sigma` (in units of :math:`\alpha s_g`).
        learn_std: whether :math:`\log\sigma` is a trained parameter (else a fixed buffer; saved either way).
        eps: :class:`PolicyFeatures` ``eps``.

    The solver (:meth:`as_solver`) needs objective values as well as gradients, so the gradient-only
    :meth:`update` hook (and with it :class:`~doubleopt.learned.TorchOptimizer`) does not apply.

    Example:
        >>> import torch, doubleopt as do
        >>> policy = do.learned.PolicyOptimizer()
        >>> fam = do.problems.MixtureLogisticRegression()
        >>> x = fam.sample(8, seed=0)
        >>> sol = do.solve(fam, policy.as_solver(), x, max_steps=20, throw=False)
        >>> sol.y.shape, sol.result.shape
        (torch.Size([8, 4]), torch.Size([8]))
        >>> u, logp = policy.sample(policy.features(sol.state.rule), torch.Generator().manual_seed(0))
        >>> u.shape, logp.shape  # normalized steps (B, n) and their log-density (B,)
        (torch.Size([8, 4]), torch.Size([8]))
    """

    arch = "policy"
    gradient_only = False

    def __init__(
        self,
        history: int = 25,
        hidden: int = 50,
        step_scale: float = 0.1,
        log_std: float = -1.0,
        learn_std: bool = True,
        eps: float = 1e-12,
    ):
        super().__init__()
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden}")
        if not step_scale > 0:
            raise ValueError(f"step_scale must be > 0, got {step_scale}")
        self.features = PolicyFeatures(history=history, eps=eps)
        self.hidden, self.step_scale, self.learn_std = int(hidden), float(step_scale), bool(learn_std)
        self.net = nn.Sequential(nn.Linear(self.features.size, self.hidden), nn.Softplus(), nn.Linear(self.hidden, 1))
        with torch.no_grad():  # start with small steps
            self.net[-1].weight.mul_(0.1)
            self.net[-1].bias.zero_()
        # config() reports the constructor's value (the trained one is in the weights), so that a checkpoint of a
        # run whose log-std has moved still matches the arguments it was started with
        self.init_log_std = float(log_std)
        init_log_std = torch.tensor(self.init_log_std)
        if self.learn_std:
            self.log_std = nn.Parameter(init_log_std)
        else:
            self.register_buffer("log_std", init_log_std)

    @property
    def history(self) -> int:
        return self.features.history

    def config(self) -> dict[str, Any]:
        return {
            "history": self.history,
            "hidden": self.hidden,
            "step_scale": self.step_scale,
            "log_std": self.init_log_std,
            "learn_std": self.learn_std,
            "eps": self.features.eps,
        }

    # ---- the gradient-only hooks of LearnedOptimizer do not apply ------------------------------
    def init_state(self, y: Tensor) -> Any:
        raise TypeError(
            "PolicyOptimizer needs objective values as well as gradients: use policy.as_solver() with do.solve, "
            "or doubleopt.learned.OptimizationEnv (the torch.optim adapter cannot drive it)"
        )

    def update(self, grad: Tensor, state: Any, y: Tensor) -> tuple[Tensor, Any]:
        return self.init_state(y)

    # ---- the policy ------------------------------------------------------------------------------
    def _check(self, z: Tensor) -> None:
        if z.dim() != 3 or z.shape[-1] != self.features.size:
            got = z.shape[-1] if z.dim() else None
            hint = f" (history {got // 3})" if got is not None and got % 3 == 0 else ""
            raise ValueError(
                f"the policy was built for history H = {self.history}: features (B, n, {self.features.size}); "
                f"got features of shape {tuple(z.shape)}{hint}. Build the environment / features with "
                f"history={self.history}"
            )

    def mean(self, z: Tensor) -> Tensor:
        r"""``(B, n)`` mean normalized step :math:`\mu_\phi(z)` for features ``z (B, n, 3H)``."""
        self._check(z)
        w = self.net[0].weight
        return self.net(z.to(w.dtype))[..., 0].to(z.dtype)

    def log_prob(self, z: Tensor, u: Tensor) -> Tensor:
        r"""``(B,)`` log-density of normalized steps ``u (B, n)`` (sum over coordinates).

        The density of the step :math:`\Delta y = \alpha s_g u` differs by :math:`-n \log(\alpha s_g)`, which
        does not depend on the policy's weights.
        """
        mu = self.mean(z)
        log_std = self.log_std.to(mu.dtype)
        r = (u - mu) / log_std.exp()
        return (-0.5 * r * r - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def sample(self, z: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``(u (B, n), log_prob (B,))``: normalized steps drawn from the policy with ``generator``."""
        mu = self.mean(z)
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
        u = mu + self.log_std.to(mu.dtype).exp() * eps
        return u, self.log_prob(z, u.detach())

    def unit(self, state: PolicyState) -> Tensor:
        r"""``(B,)`` the step unit :math:`\alpha s_g`: the step is ``unit[:, None] * u``."""
        return self.step_scale * state.grad_scale

    def mean_step(self, state: PolicyState) -> Tensor:
        r"""``(B, n)`` the deterministic step :math:`\alpha s_g \mu_\phi(z)`."""
        return self.unit(state)[:, None] * self.mean(self.features(state))

    # ---- solver and weights ----------------------------------------------------------------------
    def as_solver(
        self, *, detach_grad: bool = False, sample: bool = False, generator: torch.Generator | None = None
    ) -> PolicySolver:
        """This policy as a solver for :func:`doubleopt.solve` (and the meta-training loop).

        Args:
            detach_grad: treat the objective values and gradients in the features as constants (as
                :meth:`LearnedOptimizer.as_solver`).
            sample: draw each step from the policy (with ``generator``) instead of taking the mean.
            generator: the ``torch.Generator`` of the sampled steps (required with ``sample=True``).

        Example:
            >>> import torch, doubleopt as do
            >>> policy = do.learned.PolicyOptimizer(history=5)
            >>> fam = do.problems.MixtureRobustRegression()
            >>> x = fam.sample(3, seed=0)
            >>> g = torch.Generator().manual_seed(0)
            >>> sol = do.solve(fam, policy.as_solver(sample=True, generator=g), x, max_steps=10, throw=False)
            >>> sol.num_steps.tolist()
            [10, 10, 10]
        """
        return PolicySolver(policy=self, detach_grad=detach_grad, sample=sample, generator=generator)

    def load_weights(self, path: str | os.PathLike) -> PolicyOptimizer:
        """:meth:`LearnedOptimizer.load_weights`, with the history length named when it differs."""
        from ._base import read_safetensors

        meta, tensors = read_safetensors(path, "weights")
        shape = tuple(tensors["net.0.weight"].shape) if "net.0.weight" in tensors else None
        if meta.get("arch") == self.arch:
            history = json.loads(meta.get("config", "{}")).get("history")
            if history is not None and history != self.history:
                raise ValueError(
                    f"cannot load {path}: its policy was trained with history H = {history} (tensor 'net.0.weight' "
                    f"of shape {shape}) but this PolicyOptimizer has history H = {self.history} (shape "
                    f"{tuple(self.net[0].weight.shape)}); build PolicyOptimizer(history={history}) or use "
                    "do.learned.load_pretrained(path)"
                )
        super().load_weights(path)
        return self


@dataclass(frozen=True)
class PolicySolver(Solver):
    """The solver of a :class:`PolicyOptimizer`: one value and gradient per step, the step from the policy.

    State: :class:`~doubleopt.solvers.RuleState` whose ``rule`` is the :class:`PolicyState` history. A step whose
    iterate or objective is non-finite stops that instance with ``RESULTS.nonfinite`` (the loop's check).
    """

    policy: PolicyOptimizer = field(default=None, compare=False)  # type: ignore[assignment]
    detach_grad: bool = False
    sample: bool = False
    generator: torch.Generator | None = field(default=None, compare=False)

    def __post_init__(self):
        if not isinstance(self.policy, PolicyOptimizer):
            raise TypeError(f"PolicySolver needs a PolicyOptimizer, got {type(self.policy).__name__}")
        if self.sample and self.generator is None:
            raise ValueError("PolicySolver(sample=True) needs an explicit torch.Generator (generator=...)")

    def _value_and_grad(self, problem, y, x):
        if self.detach_grad:
            with torch.no_grad():
                return problem.value_and_grad(y.detach(), x)
        return problem.value_and_grad(y, x)

    def init(self, problem, y, x):
        value, grad = self._value_and_grad(problem, y, x)
        return RuleState(value, grad, self.policy.features.init(value, grad))

    def step(self, problem, y, x, state):
        history = state.rule
        z = self.policy.features(history)
        if self.sample:
            u, _ = self.policy.sample(z, self.generator)
        else:
            u = self.policy.mean(z)
        step = (self.policy.unit(history)[:, None] * u).to(y.dtype)
        y = y + step
        value, grad = self._value_and_grad(problem, y, x)
        return y, RuleState(value, grad, self.policy.features.push(history, value, grad, step))


__all__ = ["PolicyFeatures", "PolicyState", "PolicyOptimizer", "PolicySolver"]
