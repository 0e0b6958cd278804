r"""Proximal policy optimization (Schulman et al. 2017) of the Li & Malik policy: ``method="ppo"``.

The :class:`~doubleopt.learned.PolicyOptimizer` is a Gaussian policy over the normalized step :math:`u`
(:mod:`doubleopt.learned.policy`); an optimizer run on one objective is an episode of the optimization MDP
(:class:`~doubleopt.learned.OptimizationEnv`). PPO trains it from sampled episodes, without differentiating
through the runs.

**Rollouts.** ``B = MetaConfig.batch`` episodes of ``T = MetaConfig.horizon`` steps, objectives and starting
points drawn with ``trainer.gen``, steps :math:`u_t \sim \pi_{\phi_{old}}(\cdot \mid z_t)` drawn with
``trainer.es_gen``. **Reward** (normalized per episode so that every objective counts alike, whatever its
scale):

.. math::
    r_t = -\frac{1}{T}\,\mathrm{clip}\!\left(\frac{f(y_{t+1})}{|f(y_0)| + \epsilon}, -c, c\right),

so the undiscounted return is minus the run's mean objective relative to its start (the paper's
:math:`-\sum_t f(y_t)`, made scale-free; the :math:`1/T` keeps returns and value targets of order 1 for any
horizon). A transition to a non-finite iterate, objective or gradient (``terminated``) ends its episode; its
reward is replaced by :math:`-c\,(T - t)/T`, the rest of the run charged at :math:`c\,|f(y_0)|` per step (the
clip's value, so that diverging never pays: without a charge a shorter episode would collect fewer negative
rewards), and it is counted in ``PPOState.nonfinite``. Nothing after it enters the batch. ``c`` is
``nonfinite_penalty``.

**Value function** :math:`V_\psi(s_t)`: a permutation-invariant critic (DeepSets), since the state is the
history of all :math:`n` coordinates and the remaining horizon,

.. math::
    V_\psi(s_t) = w^\top \tanh\!\big(W_2 [\tfrac1n \textstyle\sum_i \tanh(W_1 z_{t,i} + b_1);\ \rho_t;\
    (T - t)/T] + b_2\big) + b,
    \qquad \rho_t = \mathrm{clip}\!\left(\frac{f(y_t)}{|f(y_0)| + \epsilon}, -c, c\right),

the policy's per-coordinate features :math:`z_{t,i}` pooled over the coordinates, plus two inputs the policy
does not see: the progress so far :math:`\rho_t` (the value is about :math:`-\rho_t (T - t)/T` for a run that
stalls) and the remaining fraction of the horizon (the episode ends at :math:`T`, so the value depends on it).

**Generalized advantage estimation** (Schulman et al. 2016) with :math:`\delta_t = r_t + \gamma
V(s_{t+1})(1 - d_t) - V(s_t)`, :math:`d_t = 1` at the horizon or a divergence:

.. math::
    \hat A_t = \sum_{l \ge 0} (\gamma\lambda)^l \Big(\prod_{k < l} (1 - d_{t+k})\Big)\, \delta_{t+l},
    \qquad \hat R_t = \hat A_t + V(s_t) \ \text{(value targets)}.

**Updates.** ``epochs`` passes over the batch's transitions, each in ``minibatches`` random minibatches (a new
permutation per epoch from ``trainer.es_gen``). Each :meth:`PPO.estimate` is one minibatch: it returns the
gradient of the clipped surrogate loss with respect to the policy's parameters (which
:class:`~doubleopt.learned.meta.MetaTrainer` clips and applies with its Adam, ``meta_lr``),

.. math::
    L(\phi) = -\frac{1}{|M|}\sum_{m \in M} \min\!\big(\kappa_m \hat A_m,\ \mathrm{clip}(\kappa_m,
    1 - \varepsilon, 1 + \varepsilon) \hat A_m\big) - \beta\, \mathcal H[\pi_\phi],
    \qquad \kappa_m = \frac{\pi_\phi(u_m \mid z_m)}{\pi_{\phi_{old}}(u_m \mid z_m)},

with :math:`\hat A` standardized over the minibatch (``normalize_advantages``), :math:`\pi(u \mid z)` the joint
density of the :math:`n` coordinates' steps, :math:`\varepsilon` = ``clip_ratio`` and :math:`\beta` =
``ent_coef`` (:math:`\mathcal H` the Gaussian's entropy per episode step); and it takes one Adam step
(``value_lr``, :class:`~doubleopt.rl.stacked.StackedAdam`, equal to ``torch.optim.Adam``) of the value network on
the same minibatch, :math:`\tfrac12 \mathrm{mean}(V_\psi(s_m) - \hat R_m)^2`. When the batch has been used for
``epochs x minibatches`` updates, the next :meth:`PPO.estimate` collects a new one first. The value network's
weights and Adam moments, the batch, the permutation and the counters are tensors of :class:`PPOState`, so
checkpoints hold them and a resumed run continues bit for bit.

Example:
    >>> import torch, doubleopt as do
    >>> from doubleopt.learned.meta import MetaConfig, MetaTrainer
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> policy = do.learned.PolicyOptimizer(history=3, hidden=8)
    >>> cfg = MetaConfig(method="ppo", horizon=10, unroll=10, batch=4, options={"epochs": 2, "minibatches": 2})
    >>> tr = MetaTrainer(policy, do.learned.li_malik_task("logistic"), cfg)
    >>> infos = [tr.step() for _ in range(5)]  # 4 updates on the first batch, then a second batch
    >>> int(tr.state.episodes), int(tr.state.position), int(tr.state.nonfinite), any(i.skipped for i in infos)
    (8, 1, 0, False)
    >>> tr.state.features.shape  # the batch's valid transitions: B * T of them, (n, 3H) features each
    torch.Size([40, 4, 9])

References:
    J. Schulman, F. Wolski, P. Dhariwal, A. Radford, O. Klimov, "Proximal policy optimization algorithms", 2017
    (arXiv:1707.06347).
    J. Schulman, P. Moritz, S. Levine, M. Jordan, P. Abbeel, "High-dimensional continuous control using
    generalized advantage estimation", ICLR 2016.
    K. Li, J. Malik, "Learning to optimize", ICLR 2017 (arXiv:1606.01885).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..rl.stacked import StackedAdam
from .estimators import EstimatorState, MetaGradientEstimator, register_estimator
from .mdp import OptimizationEnv
from .policy import PolicyOptimizer

if TYPE_CHECKING:
    from .meta import MetaConfig, MetaTrainer


# ---- the pieces: advantages, the clipped objective, the critic ----------------------------------------------


def generalized_advantages(rewards: Tensor, values: Tensor, terminal: Tensor, gamma: float, lam: float) -> Tensor:
    r"""GAE :math:`\hat A_t` (module docstring) of episodes stored along the last dimension.

    Args:
        rewards: ``(..., T)`` :math:`r_t`.
        values: ``(..., T + 1)`` :math:`V(s_t)`, the last one the bootstrap value after step :math:`T`.
        terminal: ``(..., T)`` bool, :math:`d_t`: no bootstrap from :math:`s_{t+1}` (and no advantage flows back
            across it).
        gamma, lam: :math:`\gamma`, :math:`\lambda`.

    Example:
        >>> import torch
        >>> r, v = torch.tensor([[1.0, 1.0, 1.0]]), torch.tensor([[0.5, 0.5, 0.5, 9.0]])
        >>> generalized_advantages(r, v, torch.tensor([[False, True, False]]), gamma=1.0, lam=1.0)
        tensor([[1.5000, 0.5000, 9.5000]])
    """
    if values.shape[:-1] != rewards.shape[:-1] or values.shape[-1] != rewards.shape[-1] + 1:
        raise ValueError(
            f"values must be (..., T + 1) for rewards (..., T), got {tuple(values.shape)} and {tuple(rewards.shape)}"
        )
    if terminal.shape != rewards.shape:
        raise ValueError(f"terminal must have the rewards' shape {tuple(rewards.shape)}, got {tuple(terminal.shape)}")
    keep = (~terminal).to(rewards.dtype)
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[..., 0])
    for t in range(rewards.shape[-1] - 1, -1, -1):
        delta = rewards[..., t] + gamma * values[..., t + 1] * keep[..., t] - values[..., t]
        last = delta + gamma * lam * keep[..., t] * last
        adv[..., t] = last
    return adv


def clipped_surrogate(log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, clip_ratio: float) -> Tensor:
    r""":math:`-\mathrm{mean}\,\min(\kappa \hat A, \mathrm{clip}(\kappa, 1 - \varepsilon, 1 + \varepsilon)\hat A)`,
    :math:`\kappa = \exp(\log\pi - \log\pi_{old})` (module docstring), all arguments ``(M,)``.

    Example:
        >>> import torch
        >>> lp = torch.log(torch.tensor([1.5, 0.5]))  # ratios 1.5 and 0.5 against old log-probs 0
        >>> clipped_surrogate(lp, torch.zeros(2), torch.tensor([1.0, 1.0]), clip_ratio=0.2)  # min(1.2, 1.5), 0.5
        tensor(-0.8500)
    """
    ratio = torch.exp(log_probs - old_log_probs)
    clipped = ratio.clamp(1.0 - clip_ratio, 1.0 + clip_ratio)
    return -torch.minimum(ratio * advantages, clipped * advantages).mean()


@dataclass(frozen=True)
class ValueNet:
    r"""The permutation-invariant critic :math:`V_\psi(s)` (module docstring) as a function of one flat weight
    vector ``(1, P)`` (the layout of :class:`~doubleopt.rl.stacked.StackedMLP` with one member, so that
    :class:`~doubleopt.rl.stacked.StackedAdam` updates it).

    Args:
        features: per-coordinate features :math:`3H`.
        width: units of the embedding and of the hidden layer.
        extra: whole-state inputs after the pooled embedding (here :math:`\rho_t` and :math:`(T - t)/T`).

    Example:
        >>> import torch
        >>> net = ValueNet(features=6, width=8)
        >>> w = net.init(torch.Generator().manual_seed(0), torch.float32)
        >>> z, extra = torch.randn(5, 3, 6), torch.rand(5, 2)  # 5 states of 3 coordinates
        >>> w.shape, net(w, z, extra).shape
        (torch.Size([1, 153]), torch.Size([5]))
        >>> torch.allclose(net(w, z, extra), net(w, z.flip(1), extra))  # the coordinates' order does not matter
        True
    """

    features: int
    width: int = 64
    extra: int = 2

    def _layers(self) -> list[tuple[int, int]]:
        return [(self.features, self.width), (self.width + self.extra, self.width), (self.width, 1)]

    @property
    def size(self) -> int:
        return sum(i * o + o for i, o in self._layers())

    def init(self, generator: torch.Generator, dtype: torch.dtype) -> Tensor:
        """``(1, P)`` weights initialized like ``torch.nn.Linear`` (uniform in :math:`\\pm 1/\\sqrt{fan_{in}}`)."""
        parts = []
        for fan_in, fan_out in self._layers():
            bound = 1.0 / math.sqrt(fan_in)
            parts.append(
                (torch.rand(fan_in * fan_out + fan_out, generator=generator, dtype=torch.float64) * 2 - 1) * bound
            )
        return torch.cat(parts).to(dtype)[None]

    def __call__(self, params: Tensor, z: Tensor, extra: Tensor) -> Tensor:
        """``(M,)`` values of states with features ``z (M, n, 3H)`` and whole-state inputs ``extra (M, 2)``."""
        if params.shape != (1, self.size):
            raise ValueError(f"value-network weights must have shape (1, {self.size}), got {tuple(params.shape)}")
        flat, k, layers = params[0], 0, []
        for fan_in, fan_out in self._layers():
            w = flat[k : k + fan_in * fan_out].view(fan_in, fan_out)
            b = flat[k + fan_in * fan_out : k + fan_in * fan_out + fan_out]
            layers.append((w, b))
            k += fan_in * fan_out + fan_out
        (w1, b1), (w2, b2), (w3, b3) = layers
        h = torch.tanh(z.to(flat.dtype) @ w1 + b1).mean(1)
        h = torch.tanh(torch.cat([h, extra.to(flat.dtype)], -1) @ w2 + b2)
        return (h @ w3 + b3)[:, 0]


# ---- the estimator --------------------------------------------------------------------------------------------


@dataclass
class PPOState(EstimatorState):
    """The current batch of rollouts (its ``M`` valid transitions), where the updates are in it, the value
    network with its Adam moments, and counters. ``carries`` is ``[]`` (PPO runs its own episodes)."""

    # ---- the batch: M valid transitions of B episodes x T steps
    features: Tensor  # (M, n, 3H) policy features z_t
    actions: Tensor  # (M, n) normalized steps u_t
    log_probs: Tensor  # (M,) log pi_old(u_t | z_t)
    critic_inputs: Tensor  # (M, 2) [rho_t, (T - t) / T]
    advantages: Tensor  # (M,) GAE
    returns: Tensor  # (M,) value targets A_t + V_old(s_t)
    # ---- updates on the batch
    perm: Tensor  # (M,) int64 the current epoch's order of the transitions
    position: Tensor  # 0-d int64 minibatch updates done on the batch (epochs * minibatches: used up)
    # ---- the value network and its Adam (StackedAdam with one member)
    value_params: Tensor  # (1, P)
    value_exp_avg: Tensor  # (1, P)
    value_exp_avg_sq: Tensor  # (1, P)
    value_steps: Tensor  # (1,) float64 Adam step count
    # ---- counters and statistics
    nonfinite: Tensor  # 0-d int64 episodes ended by a transition to a non-finite iterate, objective or gradient
    episodes: Tensor  # 0-d int64 episodes collected
    mean_return: Tensor  # 0-d float64 mean undiscounted return of the current batch's episodes (gamma = 1)
    value_loss: Tensor  # 0-d float64 value loss of the last minibatch (before its Adam step)


@register_estimator("ppo")
@dataclass(frozen=True)
class PPO(MetaGradientEstimator):
    r"""Proximal policy optimization of a :class:`~doubleopt.learned.PolicyOptimizer` (module docstring).

    Settings (``MetaConfig.options`` / ``doubleopt train-lopt --option NAME=VALUE``); the trainer's
    ``MetaConfig`` gives the rollouts (``batch`` episodes of ``horizon`` steps), the policy's Adam step size
    (``meta_lr``) and gradient-norm clip (``clip``); ``unroll`` and the ES settings are not used.

    The defaults serve the three Li & Malik families with ``horizon = 100`` (the evaluation horizon), ``batch``
    16 to 64 episodes and ``meta_lr = 3e-3``: on the logistic family the mean-action policy's objective at
    iteration 100 falls well below the initial policy's within a few hundred meta-steps and keeps improving for
    thousands; ``meta_lr = 1e-2`` made training unstable there.
    """

    epochs: int = 4  # passes over each batch of rollouts
    minibatches: int = 4  # minibatches per pass (each one meta-step); at most MetaConfig.batch
    clip_ratio: float = 0.2  # epsilon of the clipped surrogate
    gamma: float = 1.0  # discount (1: the paper's undiscounted sum over the horizon)
    gae_lambda: float = 0.95  # GAE lambda
    ent_coef: float = 0.0  # entropy bonus beta (acts on the learned log-std)
    normalize_advantages: bool = True  # standardize the advantages over each minibatch
    value_lr: float = 1e-3  # Adam step size of the value network
    value_width: int = 64  # units of the critic's embedding and hidden layer
    nonfinite_penalty: float = 2.0  # c: clip of f / |f(y_0)| in the reward, and the charge per step after divergence
    reward_eps: float = 1e-8  # epsilon of |f(y_0)| + epsilon

    def __post_init__(self):
        for name in ("epochs", "minibatches", "value_width"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"ppo option {name} must be an integer >= 1, got {v!r}")
        if not 0 < self.clip_ratio < 1:
            raise ValueError(f"ppo option clip_ratio must be in (0, 1), got {self.clip_ratio!r}")
        if not 0 <= self.gamma <= 1 or not 0 <= self.gae_lambda <= 1:
            raise ValueError(
                f"ppo options gamma and gae_lambda must be in [0, 1], got {self.gamma!r}, {self.gae_lambda!r}"
            )
        for name in ("value_lr", "nonfinite_penalty", "reward_eps"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0):
                raise ValueError(f"ppo option {name} must be a finite number > 0, got {v!r}")
        if not (isinstance(self.ent_coef, (int, float)) and math.isfinite(self.ent_coef) and self.ent_coef >= 0):
            raise ValueError(f"ppo option ent_coef must be a finite number >= 0, got {self.ent_coef!r}")

    @classmethod
    def from_config(cls, config: MetaConfig) -> PPO:
        est = super().from_config(config)  # refuses stagger and unknown options
        if est.minibatches > config.batch:
            raise ValueError(
                f"ppo option minibatches ({est.minibatches}) must be at most MetaConfig.batch ({config.batch}): "
                "a batch holds at least one transition per episode"
            )
        return est

    @property
    def updates_per_batch(self) -> int:
        return self.epochs * self.minibatches

    # ---- protocol --------------------------------------------------------------------------------------------
    def _policy(self, trainer: MetaTrainer) -> PolicyOptimizer:
        if not isinstance(trainer.lopt, PolicyOptimizer):
            raise TypeError(
                f"method 'ppo' trains a PolicyOptimizer (a Gaussian policy over the step), got "
                f"{type(trainer.lopt).__name__}; use --arch policy / do.learned.PolicyOptimizer"
            )
        if not isinstance(getattr(trainer.task.problem, "dim", None), int):
            raise TypeError(
                f"method 'ppo' runs episodes with OptimizationEnv, which needs a task whose problem has a fixed "
                f"dimension (problem.dim), got task {trainer.task.name!r}"
            )
        return trainer.lopt

    def init(self, trainer: MetaTrainer) -> PPOState:
        """No batch yet (the first :meth:`estimate` collects one); a new value network from ``trainer.es_gen``."""
        policy = self._policy(trainer)
        dtype = policy.net[0].weight.dtype
        params = self._critic(policy).init(trainer.es_gen, dtype)
        F_, n = policy.features.size, trainer.task.problem.dim
        empty = torch.zeros(0, dtype=dtype)
        zero = torch.zeros((), dtype=torch.int64)
        return PPOState(
            carries=[],
            features=empty.new_zeros(0, n, F_),
            actions=empty.new_zeros(0, n),
            log_probs=empty,
            critic_inputs=empty.new_zeros(0, 2),
            advantages=empty,
            returns=empty,
            perm=torch.zeros(0, dtype=torch.int64),
            position=torch.tensor(self.updates_per_batch, dtype=torch.int64),
            value_params=params,
            value_exp_avg=torch.zeros_like(params),
            value_exp_avg_sq=torch.zeros_like(params),
            value_steps=torch.zeros(1, dtype=torch.float64),
            nonfinite=zero,
            episodes=zero.clone(),
            mean_return=torch.tensor(float("nan"), dtype=torch.float64),
            value_loss=torch.tensor(float("nan"), dtype=torch.float64),
        )

    def estimate(self, trainer: MetaTrainer, state: PPOState) -> tuple[float, list[Tensor], PPOState]:
        """One minibatch: the clipped-surrogate gradient for the policy and an Adam step of the value network;
        a new batch of rollouts first if the current one is used up."""
        policy = self._policy(trainer)
        if int(state.position) >= self.updates_per_batch:
            state = self.collect(trainer, state)
        pos, k = int(state.position), int(state.position) % self.minibatches
        perm = state.perm
        if k == 0:
            perm = torch.randperm(state.advantages.shape[0], generator=trainer.es_gen)
        idx = torch.tensor_split(perm, self.minibatches)[k]
        z, u, ci = state.features[idx], state.actions[idx], state.critic_inputs[idx]
        adv, ret = state.advantages[idx], state.returns[idx]
        if self.normalize_advantages:
            adv = (adv - adv.mean()) / (adv.std(unbiased=False) + 1e-8)
        params = list(policy.parameters())
        with torch.enable_grad():
            loss = self.policy_loss(policy, z, u, state.log_probs[idx], adv)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        value = self._value_step(policy, state, z, ci, ret)
        return float(loss.detach()), grads, replace(state, perm=perm, position=torch.tensor(pos + 1), **value)

    def restart(self, trainer: MetaTrainer, state: PPOState, finite: bool) -> PPOState:
        """After a skipped (non-finite) meta-step the batch is dropped: the next :meth:`estimate` collects anew."""
        if finite:
            return state
        return replace(state, position=torch.tensor(self.updates_per_batch, dtype=torch.int64))

    # ---- losses ----------------------------------------------------------------------------------------------
    def policy_loss(
        self, policy: PolicyOptimizer, z: Tensor, u: Tensor, old_log_probs: Tensor, advantages: Tensor
    ) -> Tensor:
        """The clipped surrogate minus ``ent_coef`` times the policy's entropy per episode step."""
        loss = clipped_surrogate(policy.log_prob(z, u), old_log_probs, advantages, self.clip_ratio)
        if self.ent_coef:
            n = u.shape[-1]
            entropy = n * (0.5 * math.log(2 * math.pi * math.e) + policy.log_std.to(loss.dtype))
            loss = loss - self.ent_coef * entropy
        return loss

    def _critic(self, policy: PolicyOptimizer) -> ValueNet:
        return ValueNet(features=policy.features.size, width=self.value_width)

    def _value_step(self, policy: PolicyOptimizer, state: PPOState, z: Tensor, ci: Tensor, ret: Tensor) -> dict:
        """One Adam step of the value network on :math:`\\frac12 \\mathrm{mean}(V - \\hat R)^2` (skipped, weights
        kept, if that gradient is non-finite)."""
        critic = self._critic(policy)
        w = state.value_params.clone().requires_grad_(True)
        with torch.enable_grad():
            vloss = 0.5 * (critic(w, z, ci) - ret.to(w.dtype)).pow(2).mean()
            (g,) = torch.autograd.grad(vloss, [w])
        w = w.detach()
        out = {"value_loss": vloss.detach().to(torch.float64)}
        if not bool(torch.isfinite(g).all()):
            return out
        adam = StackedAdam([w], lr=self.value_lr, agents=1)
        adam.step_count = state.value_steps.clone()
        adam.exp_avg, adam.exp_avg_sq = [state.value_exp_avg.clone()], [state.value_exp_avg_sq.clone()]
        adam.step([g])
        return {
            **out,
            "value_params": w,
            "value_exp_avg": adam.exp_avg[0],
            "value_exp_avg_sq": adam.exp_avg_sq[0],
            "value_steps": adam.step_count,
        }

    # ---- rollouts --------------------------------------------------------------------------------------------
    def _progress(self, value: Tensor, scale: Tensor) -> Tensor:
        """:math:`\\mathrm{clip}(f / (|f(y_0)| + \\epsilon), -c, c)`; non-finite values (only in ended episodes,
        never used) become ``c``."""
        c = self.nonfinite_penalty
        rho = value / scale
        return torch.where(torch.isfinite(rho), rho.clamp(-c, c), torch.full_like(rho, c))

    @torch.no_grad()
    def collect(self, trainer: MetaTrainer, state: PPOState) -> PPOState:
        """A new batch: ``B`` episodes of ``T`` steps sampled from the current policy, their advantages and value
        targets (module docstring); resets the batch's update position."""
        policy, c = self._policy(trainer), trainer.config
        B, T = c.batch, c.horizon
        env = OptimizationEnv(trainer.task, B, horizon=T, history=policy.history, eps=policy.features.eps)
        obs = env.reset(trainer.gen)
        trainer.trajectories += 1
        f0 = env.state.history.values[:, 0]
        scale = f0.abs() + self.reward_eps
        alive = torch.isfinite(obs).flatten(1).all(1) & torch.isfinite(f0)
        nonfinite = int((~alive).sum())
        zs, us, lps, cis, rews, valid, terminal = [], [], [], [], [], [], []
        for t in range(T):
            rho = self._progress(env.state.history.values[:, 0], scale)
            ci = torch.stack([rho, torch.full_like(rho, (T - t) / T)], -1)
            u, logp = policy.sample(obs, trainer.es_gen)
            z = obs
            obs, reward, terminated, _ = env.step(policy.unit(env.state.history)[:, None] * u)
            ended = alive & terminated
            nonfinite += int(ended.sum())
            penalty = torch.full_like(rho, -self.nonfinite_penalty * (T - t) / T)
            r = torch.where(ended, penalty, -self._progress(-reward, scale) / T)
            zs.append(z)
            us.append(u)
            lps.append(logp)
            cis.append(ci)
            rews.append(torch.where(alive, r, torch.zeros_like(r)))
            valid.append(alive)
            terminal.append(terminated | ~alive | (t == T - 1))
            alive = alive & ~terminated
        valid_, terminal_, rewards = torch.stack(valid, 1), torch.stack(terminal, 1), torch.stack(rews, 1)
        Z, U, LP, CI = (torch.stack(x, 1)[valid_] for x in (zs, us, lps, cis))  # (M, ...)
        critic = self._critic(policy)
        values = torch.zeros(B, T + 1, dtype=rewards.dtype)
        values[:, :T][valid_] = critic(state.value_params, Z, CI).to(rewards.dtype)
        adv = generalized_advantages(rewards, values, terminal_, self.gamma, self.gae_lambda)
        returns = adv + values[:, :T]
        return replace(
            state,
            features=Z.contiguous(),
            actions=U.contiguous(),
            log_probs=LP.contiguous(),
            critic_inputs=CI.contiguous(),
            advantages=adv[valid_].contiguous(),
            returns=returns[valid_].contiguous(),
            perm=torch.zeros(0, dtype=torch.int64),
            position=torch.zeros((), dtype=torch.int64),
            nonfinite=state.nonfinite + nonfinite,
            episodes=state.episodes + B,
            mean_return=rewards.sum(1).mean().to(torch.float64),
        )


__all__ = ["PPO", "PPOState", "ValueNet", "generalized_advantages", "clipped_surrogate"]
