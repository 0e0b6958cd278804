"""Actor-critic as two coupled optimizations: DDPG, TD3 and SAC as declared critic and actor updates.

The **critic update** is the inner, fast problem: a regression of ``Q_phi(s, a)`` onto bootstrapped targets
of the current policy,

.. math::
    \\min_\\phi\\; \\mathbb{E}_{(s,a,r,s') \\sim \\mathcal D}\\big[(Q_\\phi(s,a) - y)^2\\big],\\qquad
    y = r + \\gamma (1 - d)\\, \\bar Q(s', a'),

and the **actor update** is the outer problem: the policy is an *amortized argmax* of the critic,
``pi_theta(s) ~ argmax_a Q_phi(s, a)`` (DDPG, TD3: ``max_theta E[Q_phi(s, pi_theta(s))]``), or of its
entropy-regularized version (SAC: ``max_theta E[Q_phi(s, a) - alpha log pi_theta(a|s)]``, ``a ~ pi_theta``).
The coupling is explicit: critic updates per actor update (``ActorUpdate.delay``, TD3's policy delay), the
two step sizes (their ratio is the timescale separation), the target smoothing ``tau`` and, for SAC, the
temperature ``alpha`` (tuned automatically towards ``target_entropy = -act_dim``).

Each algorithm is one class with one protocol (``build``, ``act``, ``critic_target``, ``actor_loss``);
:class:`~doubleopt.rl.ActorCriticTrainer` runs any of them for ``K`` agents at once. Actions live in
``[-1, 1]`` (the environment scales them).

References: Lillicrap et al. 2016 (DDPG); Fujimoto et al. 2018 (TD3); Haarnoja et al. 2018 (SAC);
Amos, "Tutorial on amortized optimization" (2023), section on control and RL.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .buffer import Batch
from .stacked import StackedMLP

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # SAC's log standard deviation bounds (as Stable-Baselines3)


def randn_per_agent(generators: Sequence[torch.Generator], shape: Sequence[int], dtype: torch.dtype) -> Tensor:
    """Standard normal draws ``(K, *shape)``, agent ``k`` from ``generators[k]`` (float64 draws, then cast)."""
    return torch.stack([torch.randn(*shape, generator=g, dtype=torch.float64) for g in generators]).to(dtype)


def uniform_per_agent(generators: Sequence[torch.Generator], shape: Sequence[int], dtype: torch.dtype) -> Tensor:
    """Uniform draws in ``[-1, 1)`` shaped ``(K, *shape)``, agent ``k`` from ``generators[k]``."""
    return torch.stack([torch.rand(*shape, generator=g, dtype=torch.float64) for g in generators]).to(dtype) * 2 - 1


@dataclass(frozen=True)
class CriticUpdate:
    """The inner, fast optimization: fit ``Q`` to the bootstrapped targets (one Adam step per update)."""

    lr: float = 1e-3  # critic Adam step size
    hidden: tuple[int, ...] = (256, 256)  # hidden layer widths of each Q network
    twin: bool = True  # two Q networks, targets from their minimum (TD3, SAC)


@dataclass(frozen=True)
class ActorUpdate:
    """The outer optimization: move the policy towards the critic's argmax (one Adam step per update)."""

    lr: float = 1e-3  # actor Adam step size
    hidden: tuple[int, ...] = (256, 256)  # hidden layer widths of the policy network
    delay: int = 1  # critic updates per actor (and target) update: TD3's policy delay


class Agents(nn.Module):
    """The networks of ``K`` agents: actor, critic (``K * n_q`` stacked Q networks), their targets, and
    (SAC) the log-temperature per agent."""

    def __init__(self, actor: StackedMLP, critic: StackedMLP, n_q: int, log_alpha: Tensor | None = None):
        super().__init__()
        self.actor, self.critic, self.n_q = actor, critic, n_q
        self.actor_target = _frozen_copy(actor)
        self.critic_target = _frozen_copy(critic)
        self.log_alpha = nn.Parameter(log_alpha) if log_alpha is not None else None

    @property
    def agents(self) -> int:
        return self.actor.members

    def q(self, critic: StackedMLP, obs: Tensor, action: Tensor, first_only: bool = False) -> Tensor:
        """Q values ``(K, n_q, N)`` (``(K, 1, N)`` with ``first_only``: TD3's actor uses ``Q_1`` alone)."""
        x = torch.cat([obs, action], dim=-1)
        k, n, d = x.shape
        if first_only or self.n_q == 1:
            members = slice(0, None, self.n_q) if self.n_q > 1 else None
            return critic(x, members).view(k, 1, n)
        x = x.unsqueeze(1).expand(k, self.n_q, n, d).reshape(k * self.n_q, n, d)
        return critic(x).view(k, self.n_q, n)


def _frozen_copy(net: StackedMLP) -> StackedMLP:
    import copy

    target = copy.deepcopy(net)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@dataclass(frozen=True)
class ActorCritic:
    """Base of the algorithms: the two updates and the coupling that every actor-critic method shares."""

    critic: CriticUpdate = field(default_factory=CriticUpdate)
    actor: ActorUpdate = field(default_factory=ActorUpdate)
    gamma: float = 0.99  # discount
    tau: float = 0.005  # target smoothing: target <- (1 - tau) target + tau online
    activation: str = "relu"  # hidden activation of both networks

    name = "actor-critic"
    stochastic_policy = False

    def __post_init__(self):
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        if not 0 < self.tau <= 1:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")
        if self.actor.delay < 1:
            raise ValueError(f"actor delay (critic updates per actor update) must be >= 1, got {self.actor.delay}")
        for what, lr in (("critic", self.critic.lr), ("actor", self.actor.lr)):
            if not (lr > 0 and math.isfinite(lr)):
                raise ValueError(f"{what} step size must be positive and finite, got {lr}")

    def policy_outputs(self, act_dim: int) -> int:
        return act_dim

    def build(self, obs_dim: int, act_dim: int, generators: Sequence[torch.Generator], dtype: torch.dtype) -> Agents:
        """Initialise ``K = len(generators)`` agents, each from its own generator (actor first, then critics)."""
        k = len(generators)
        n_q = 2 if self.critic.twin else 1
        # one generator per agent, used in a fixed order, so agent k's weights do not depend on K
        actor_ws, critic_ws = [], []
        for g in generators:
            actor_ws.append(StackedMLP(1, [obs_dim, *self.actor.hidden, self.policy_outputs(act_dim)], [g],
                                       self.activation, dtype))
            critic_ws.append(StackedMLP(n_q, [obs_dim + act_dim, *self.critic.hidden, 1], [g], self.activation,
                                        dtype))
        actor = _concat(actor_ws, k)
        critic = _concat(critic_ws, k * n_q)
        log_alpha = self.initial_log_alpha(k, dtype)
        return Agents(actor, critic, n_q, log_alpha)

    def initial_log_alpha(self, agents: int, dtype: torch.dtype) -> Tensor | None:
        return None

    # ---- the protocol ---------------------------------------------------------------------------
    def act(self, agents: Agents, obs: Tensor, generators: Sequence[torch.Generator] | None) -> Tensor:
        """Actions in ``[-1, 1]`` for ``obs (K, E, obs_dim)``: exploratory with generators, greedy without."""
        raise NotImplementedError

    def critic_target(self, agents: Agents, batch: Batch, generators: Sequence[torch.Generator]) -> Tensor:
        """Bootstrapped regression targets ``y (K, N)`` (no gradient)."""
        raise NotImplementedError

    def actor_loss(self, agents: Agents, obs: Tensor, generators: Sequence[torch.Generator]) -> tuple[Tensor, Tensor]:
        """Per-agent actor losses ``(K,)`` and, for SAC, the per-agent temperature losses (else zeros)."""
        raise NotImplementedError

    def critic_loss(self, agents: Agents, batch: Batch, target: Tensor) -> Tensor:
        """Per-agent Bellman error ``(K,)``: mean squared TD error, summed over the twin critics."""
        q = agents.q(agents.critic, batch.obs, batch.action)
        return ((q - target.unsqueeze(1)) ** 2).mean(dim=2).sum(dim=1)


def _concat(nets: list[StackedMLP], members: int) -> StackedMLP:
    """Stack single-agent networks into one ``StackedMLP`` with ``members`` members."""
    out = nets[0]
    if len(nets) == 1:
        return out
    with torch.no_grad():
        out.flat = nn.Parameter(torch.cat([n.flat for n in nets]).contiguous())
    out.members = members
    return out


@dataclass(frozen=True)
class TD3(ActorCritic):
    """Twin Delayed DDPG (Fujimoto et al. 2018): twin critics, target policy smoothing, delayed actor.

    Target: ``y = r + gamma (1 - d) min_j Q'_j(s', clip(pi'(s') + clip(eps, -c, c), -1, 1))``,
    ``eps ~ N(0, target_noise^2)``; actor: ``min_theta -E[Q_1(s, pi_theta(s))]`` every ``actor.delay``
    critic updates, with the targets updated at the same time. Exploration: ``pi(s) + N(0, exploration_noise^2)``.

    Example:
        >>> algo = TD3(actor=ActorUpdate(delay=2, hidden=(64, 64)), critic=CriticUpdate(hidden=(64, 64)))
        >>> algo.actor.delay, algo.critic.twin
        (2, True)
    """

    actor: ActorUpdate = field(default_factory=lambda: ActorUpdate(delay=2))
    exploration_noise: float = 0.1  # std of the Gaussian exploration noise (actions in [-1, 1])
    target_noise: float = 0.2  # std of the target policy smoothing noise
    target_noise_clip: float = 0.5  # clip of the target policy smoothing noise

    name = "td3"

    def act(self, agents, obs, generators):
        a = torch.tanh(agents.actor(obs))
        if generators is not None and self.exploration_noise > 0:
            noise = randn_per_agent(generators, a.shape[1:], a.dtype) * self.exploration_noise
            a = (a + noise).clamp(-1, 1)
        return a

    def critic_target(self, agents, batch, generators):
        with torch.no_grad():
            a = torch.tanh(agents.actor_target(batch.next_obs))
            if self.target_noise > 0:
                noise = randn_per_agent(generators, a.shape[1:], a.dtype) * self.target_noise
                a = (a + noise.clamp(-self.target_noise_clip, self.target_noise_clip)).clamp(-1, 1)
            q = agents.q(agents.critic_target, batch.next_obs, a).min(dim=1).values
            return batch.reward + self.gamma * (1 - batch.done) * q

    def actor_loss(self, agents, obs, generators):
        a = torch.tanh(agents.actor(obs))
        loss = -agents.q(agents.critic, obs, a, first_only=True)[:, 0].mean(dim=1)
        return loss, torch.zeros_like(loss)


@dataclass(frozen=True)
class DDPG(TD3):
    """DDPG (Lillicrap et al. 2016) in the form of Fujimoto et al.'s "OurDDPG": one critic, no target
    smoothing, an actor update after every critic update."""

    critic: CriticUpdate = field(default_factory=lambda: CriticUpdate(twin=False))
    actor: ActorUpdate = field(default_factory=lambda: ActorUpdate(delay=1))
    target_noise: float = 0.0

    name = "ddpg"


@dataclass(frozen=True)
class SAC(ActorCritic):
    """Soft Actor-Critic (Haarnoja et al. 2018) with automatic temperature tuning.

    Policy ``a = tanh(mu(s) + sigma(s) eps)``; target ``y = r + gamma (1 - d) (min_j Q'_j(s', a') - alpha log
    pi(a'|s'))``, ``a' ~ pi(.|s')``; actor ``min E[alpha log pi(a|s) - min_j Q_j(s, a)]``; temperature
    ``min_{log alpha} -E[log alpha (log pi(a|s) + target_entropy)]`` (default ``target_entropy = -act_dim``),
    both with the actor's step size. Greedy action: ``tanh(mu(s))``.
    """

    initial_alpha: float = 1.0  # starting temperature
    auto_alpha: bool = True  # tune the temperature towards the target entropy
    target_entropy: float | None = None  # default -act_dim

    name = "sac"
    stochastic_policy = True

    def __post_init__(self):
        super().__post_init__()
        if not self.initial_alpha > 0:
            raise ValueError(f"initial_alpha must be positive, got {self.initial_alpha}")

    def policy_outputs(self, act_dim):
        return 2 * act_dim

    def initial_log_alpha(self, agents, dtype):
        return torch.full((agents,), math.log(self.initial_alpha), dtype=dtype)

    def _sample(self, agents: Agents, actor: StackedMLP, obs: Tensor, generators) -> tuple[Tensor, Tensor]:
        mean, log_std = actor(obs).chunk(2, dim=-1)
        log_std = log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
        eps = randn_per_agent(generators, mean.shape[1:], mean.dtype)
        u = mean + log_std.exp() * eps
        a = torch.tanh(u)
        # log N(u; mean, std) - sum log(1 - tanh(u)^2), the latter as 2 (log 2 - u - softplus(-2u))
        log_prob = (-0.5 * eps**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_prob = log_prob - (2 * (math.log(2) - u - nn.functional.softplus(-2 * u))).sum(-1)
        return a, log_prob

    def alpha(self, agents: Agents) -> Tensor:
        return agents.log_alpha.detach().exp()

    def act(self, agents, obs, generators):
        if generators is None:
            mean, _ = agents.actor(obs).chunk(2, dim=-1)
            return torch.tanh(mean)
        return self._sample(agents, agents.actor, obs, generators)[0]

    def critic_target(self, agents, batch, generators):
        with torch.no_grad():
            a, log_prob = self._sample(agents, agents.actor, batch.next_obs, generators)
            q = agents.q(agents.critic_target, batch.next_obs, a).min(dim=1).values
            soft_q = q - self.alpha(agents).unsqueeze(1) * log_prob
            return batch.reward + self.gamma * (1 - batch.done) * soft_q

    def actor_loss(self, agents, obs, generators):
        a, log_prob = self._sample(agents, agents.actor, obs, generators)
        q = agents.q(agents.critic, obs, a).min(dim=1).values
        loss = (self.alpha(agents).unsqueeze(1) * log_prob - q).mean(dim=1)
        if not self.auto_alpha:
            return loss, torch.zeros_like(loss)
        target_entropy = -float(a.shape[-1]) if self.target_entropy is None else self.target_entropy
        alpha_loss = -(agents.log_alpha.unsqueeze(1) * (log_prob.detach() + target_entropy)).mean(dim=1)
        return loss, alpha_loss


ALGORITHMS: dict[str, type[ActorCritic]] = {"ddpg": DDPG, "td3": TD3, "sac": SAC}
"""The algorithms by name (``--algo`` of ``doubleopt rl-train``, :func:`~doubleopt.rl.algorithm_from_name`)."""
