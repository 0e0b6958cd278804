r"""Meta-gradient estimators: truncated BPTT, antithetic ES and PES, as objects with one protocol.

An estimator turns one truncation of ``K`` optimizee steps (of a horizon of ``T`` steps) into an estimate of
the gradient of the meta-loss with respect to the learned optimizer's weights :math:`\phi`, which
:class:`~doubleopt.learned.meta.MetaTrainer` clips and applies with Adam. Like optax's
``GradientTransformation(init, update)``, an estimator is a frozen dataclass of settings with methods that
take and return a state (a dataclass of trajectories and tensors, saved in checkpoints):

* ``init(trainer) -> state``: start the trajectories it advances;
* ``estimate(trainer, state) -> (loss, grads, new_state)``: the meta-loss of the next truncation (a float)
  and one gradient tensor per parameter of ``trainer.lopt``; advances the trajectories;
* ``restart(trainer, state, finite) -> state``: after the meta-step, start over the trajectories that reached
  the horizon or diverged (``finite`` is False when the meta-step was skipped).

Data-parallel training (``trainer.comm`` with several processes): an estimator whose ``data_parallel`` is
``"batch"`` (TBPTT) draws the optimizees of its share of ``trainer.streams`` only; ``"pairs"`` (ES, PES) runs its
share of the antithetic pairs; ``""`` (the default) is refused. ``estimate`` sums the parts with
``trainer.all_reduce`` and returns the whole meta-gradient on every process; decisions that depend on a
process's own trajectories (restart after a divergence) are agreed with ``trainer.comm.all``. A state whose
``sharded`` is True holds only this process's trajectories and rows of its tensor fields.

:data:`ESTIMATORS` maps the names accepted by ``MetaConfig(method=...)`` and ``doubleopt train-lopt
--method`` to the classes; a new estimator is one class decorated with :func:`register_estimator`.

**Meta-objective.** :math:`L(\phi) = \frac{1}{KB}\sum_{t} \sum_b w_t f(\theta^{(b)}_t; x'_t)` over the
:math:`K` steps of a truncation, with :math:`x'_t` an independent held-out minibatch (``Task.eval_batch``)
and :math:`w_t = 1` (Andrychowicz et al. 2016, Eq. 3), or the weights of ``MetaConfig.weighted_loss``.

References:
    M. Andrychowicz et al., "Learning to learn by gradient descent by gradient descent", NeurIPS 2016.
    P. Vicol, L. Metz, J. Sohl-Dickstein, "Unbiased gradient estimation in unrolled computation graphs with
    persistent evolution strategies", ICML 2021.
    T. Salimans et al., "Evolution strategies as a scalable alternative to reinforcement learning", 2017.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass
from typing import TYPE_CHECKING, ClassVar, TypeVar

import torch
from torch import Tensor

from .._tree import tree_detach
from .trajectory import Carry, finite_carry, unroll

if TYPE_CHECKING:
    from .meta import MetaConfig, MetaTrainer


@dataclass
class EstimatorState:
    """The trajectories an estimator advances. Subclasses add tensor fields, which checkpoints save under
    ``"<method>.<field>"``; ``carries[0]`` is the trainer's :attr:`~doubleopt.learned.meta.MetaTrainer.carry`."""

    carries: list[Carry]

    # data-parallel: each process holds its own part of carries and of the tensor fields' rows (checkpoints
    # gather the parts in rank order); False: every process holds the same state
    sharded: ClassVar[bool] = False


class MetaGradientEstimator(ABC):
    """The protocol every meta-gradient estimator follows (see the module docstring)."""

    name: ClassVar[str] = ""  # set by register_estimator
    data_parallel: ClassVar[str] = ""  # how processes split the work: "batch", "pairs" or "" (not supported)

    @classmethod
    def from_config(cls, config: MetaConfig) -> MetaGradientEstimator:
        """The estimator's settings from a :class:`~doubleopt.learned.meta.MetaConfig`: by default its dataclass
        fields from ``config.options`` (an unknown name is a ``ValueError`` listing the known ones); ``stagger``
        and ``shards`` are refused, since only TBPTT supports them."""
        if config.stagger > 1:
            raise ValueError(f"stagger applies to method 'tbptt' only, got method {config.method!r}")
        if config.shards > 1:
            raise ValueError(f"shards applies to method 'tbptt' only, got method {config.method!r}")
        return cls(**cls.check_options(config))

    @classmethod
    def check_options(cls, config: MetaConfig) -> dict:
        """``config.options``, checked against the estimator's dataclass fields."""
        known = [f.name for f in fields(cls)] if is_dataclass(cls) else []
        unknown = sorted(set(config.options) - set(known))
        if unknown:
            raise ValueError(
                f"unknown option(s) {unknown} for method {config.method!r}; it takes {known or 'no options'}"
            )
        return dict(config.options)

    @abstractmethod
    def init(self, trainer: MetaTrainer) -> EstimatorState:
        """New trajectories (from ``trainer.new_trajectory``)."""

    @abstractmethod
    def estimate(self, trainer: MetaTrainer, state: EstimatorState) -> tuple[float, list[Tensor], EstimatorState]:
        """``(meta-loss, gradient per parameter of trainer.lopt, new state)`` of the next truncation."""

    def restart(self, trainer: MetaTrainer, state: EstimatorState, finite: bool) -> EstimatorState:
        """After a meta-step: new trajectories (:meth:`init`) if the meta-step was non-finite, a trajectory
        diverged or the trajectories reached the horizon; else ``state``."""
        if (
            not finite
            or int(state.carries[0].t) >= trainer.config.horizon
            or not trainer.comm.all(all(finite_carry(c) for c in state.carries))
        ):
            return self.init(trainer)
        return state


ESTIMATORS: dict[str, type[MetaGradientEstimator]] = {}

E = TypeVar("E", bound=type[MetaGradientEstimator])


def register_estimator(name: str) -> Callable[[E], E]:
    """Class decorator: make the estimator available as ``MetaConfig(method=name)``."""

    def register(cls: E) -> E:
        if name in ESTIMATORS:
            raise ValueError(f"a meta-gradient estimator named {name!r} is registered already")
        cls.name = name
        ESTIMATORS[name] = cls
        return cls

    return register


# ---- truncated backpropagation through time -----------------------------------------------------------


def stagger_offsets(stagger: int, unroll: int, horizon: int) -> list[int]:
    """Starting step of each of ``stagger`` trajectory groups: truncation boundaries spread evenly over the
    horizon."""
    n = horizon // unroll
    return [(g * n // stagger) * unroll for g in range(stagger)]


@dataclass
class TBPTTState(EstimatorState):
    """One trajectory per random stream of this process and stagger group (stream-major), detached between
    truncations."""

    sharded: ClassVar[bool] = True


@register_estimator("tbptt")
@dataclass(frozen=True)
class TBPTT(MetaGradientEstimator):
    r"""Truncated backpropagation through time: :math:`\hat g = \nabla_\phi L(\phi)`, the exact gradient of the
    truncated meta-loss, by backpropagation through the ``K`` steps.

    Optimizee and optimizer states are carried (detached) to the next truncation; memory is that of ``K``
    steps, independent of ``T``; the estimate is biased by the truncation. With ``second_order=False`` (a
    :class:`~doubleopt.learned.meta.MetaConfig` field, which builds ``trainer.solver``) the optimizee gradient
    is a constant input (the paper's simplification).

    With ``stagger = G > 1`` the ``B`` optimizees form ``G`` groups whose trajectories start ``T / G`` steps
    apart (each group is advanced without gradient to its offset when it is first drawn, and restarts on its
    own when it reaches ``T``), so every meta-gradient averages truncations from ``G`` phases of training
    instead of all ``B`` optimizees being at the same step. Without it consecutive meta-steps cycle through
    the phases (steps 1-K, then K+1-2K, ...), each meta-gradient seeing one phase only (learned_optimization
    desynchronizes its truncated trajectories with a random initial iteration offset for the same reason).

    With ``shards = S`` (a :class:`~doubleopt.learned.meta.MetaConfig` field) the batch is drawn as ``S`` random
    streams of ``B / S`` optimizees (``trainer.gens``), each with its own ``stagger`` groups; data-parallel
    processes split the streams, and the meta-loss is the mean over all of them.
    """

    stagger: int = 1  # trajectory groups at different phases of the horizon
    data_parallel: ClassVar[str] = "batch"

    @classmethod
    def from_config(cls, config: MetaConfig) -> TBPTT:
        return cls(**{"stagger": config.stagger, **cls.check_options(config)})

    def group_size(self, config: MetaConfig) -> int:
        """Optimizees per trajectory: ``batch / (shards x stagger)``."""
        return config.batch // (config.shards * self.stagger)

    def init(self, trainer: MetaTrainer) -> TBPTTState:
        c = trainer.config
        offsets = stagger_offsets(self.stagger, c.unroll, c.horizon)
        return TBPTTState(
            carries=[
                trainer.new_trajectory(self.group_size(c), offset, stream=k)
                for k in range(len(trainer.gens))
                for offset in offsets
            ]
        )

    def estimate(self, trainer: MetaTrainer, state: TBPTTState) -> tuple[float, list[Tensor], TBPTTState]:
        c = trainer.config
        params = list(trainer.lopt.parameters())
        groups = c.shards * self.stagger  # over all processes; equal sizes: the mean of group means is the mean
        with torch.enable_grad():
            loss, new = 0.0, []
            for i, carry in enumerate(state.carries):
                t0 = int(carry.t)
                losses, nxt = unroll(trainer.solver, trainer.task, carry, c.unroll, trainer.gens[i // self.stagger])
                loss = loss + c.weighted_loss(losses, t0) / groups
                new.append(tree_detach(nxt))
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        grads, total = trainer.all_reduce(grads, float(loss.detach()))
        return total, grads, TBPTTState(carries=new)

    def restart(self, trainer: MetaTrainer, state: TBPTTState, finite: bool) -> TBPTTState:
        """Each group restarts on its own at the end of its horizon; all restart if anything diverged (on any
        process)."""
        if not finite or not trainer.comm.all(all(finite_carry(c) for c in state.carries)):
            return self.init(trainer)
        c = trainer.config
        return TBPTTState(
            carries=[
                trainer.new_trajectory(self.group_size(c), stream=i // self.stagger)
                if int(carry.t) >= c.horizon
                else carry
                for i, carry in enumerate(state.carries)
            ]
        )


# ---- evolution strategies -----------------------------------------------------------------------------


def flat_params(module: torch.nn.Module) -> Tensor:
    """The module's parameters as one detached vector."""
    return torch.nn.utils.parameters_to_vector(module.parameters()).detach()


def unflatten_like(flat: Tensor, params: list[Tensor]) -> list[Tensor]:
    """Split a flat vector into tensors shaped (and typed) like ``params``."""
    out, k = [], 0
    for p in params:
        out.append(flat[k : k + p.numel()].reshape(p.shape).to(p.dtype))
        k += p.numel()
    return out


class PerturbedUnroll:
    """Evaluates the meta-loss of the next truncation at perturbed weights :math:`\\phi + \\delta`, without
    gradient, on the minibatches of the trainer's generator state at construction (every call sees the same
    ones), with a copy of the learned optimizer so ``trainer.lopt`` is untouched."""

    def __init__(self, trainer: MetaTrainer):
        self.trainer = trainer
        self.base = flat_params(trainer.lopt)  # phi
        self.gen_state = trainer.gen.get_state()
        self._scratch = copy.deepcopy(trainer.lopt)

    def __call__(self, flat: Tensor, carry: Carry) -> tuple[float, Carry]:
        """``(meta-loss at weights flat, carry after the truncation)``."""
        tr = self.trainer
        torch.nn.utils.vector_to_parameters(flat, self._scratch.parameters())
        tr.gen.set_state(self.gen_state)
        solver = self._scratch.as_solver(detach_grad=True)
        with torch.no_grad():
            losses, new = unroll(solver, tr.task, carry, tr.config.unroll, tr.gen)
        return float(tr.config.weighted_loss(losses, int(carry.t))), new


@dataclass(frozen=True)
class AntitheticES(MetaGradientEstimator):
    r"""Shared part of ES and PES: ``pairs`` antithetic Gaussian perturbations :math:`\pm\epsilon_j`,
    :math:`\epsilon_j \sim N(0, \sigma^2 I)`, drawn from ``trainer.es_gen``, and the smoothing estimator
    :math:`\frac{1}{2N\sigma^2} \sum_{j=1}^{N} d_j (L^+_j - L^-_j)` along directions :math:`d_j`.

    Data-parallel: every process draws all :math:`\epsilon` (the same generator state) and runs its share of
    the pairs (:meth:`my_pairs`); the shares of the sum are added with ``trainer.all_reduce``."""

    pairs: int = 8  # antithetic pairs N
    sigma: float = 0.01  # perturbation standard deviation
    data_parallel: ClassVar[str] = "pairs"

    def __post_init__(self):
        if self.pairs < 1 or not self.sigma > 0:
            raise ValueError(f"pairs must be >= 1 and sigma > 0, got {self.pairs}, {self.sigma}")

    @classmethod
    def from_config(cls, config: MetaConfig) -> AntitheticES:
        super().from_config(config)  # refuses stagger and unknown options
        return cls(**{"pairs": config.es_pairs, "sigma": config.es_sigma, **cls.check_options(config)})

    def my_pairs(self, trainer: MetaTrainer) -> range:
        """The pairs this process runs (all of them with one process; ``pairs`` must be a multiple of the
        number of processes)."""
        return trainer.comm.shard(self.pairs, even=True, what=f"{self.name} pairs (es_pairs)")

    def antithetic_unrolls(
        self, trainer: MetaTrainer, starts: list[Carry]
    ) -> tuple[PerturbedUnroll, Tensor, list[float], list[float], list[Carry]]:
        """Draw :math:`\\epsilon` ``(N, P)`` and, for the k-th of this process's pairs (:meth:`my_pairs`), run
        :math:`\\phi + \\epsilon_j` from ``starts[2k]`` and :math:`\\phi - \\epsilon_j` from ``starts[2k + 1]``.
        Returns ``(run, eps of these pairs, L+, L-, ends)``; ``run`` evaluates further weights on the same
        minibatches."""
        run = PerturbedUnroll(trainer)
        eps = self.sigma * torch.randn(self.pairs, run.base.numel(), generator=trainer.es_gen, dtype=run.base.dtype)
        mine = self.my_pairs(trainer)
        eps = eps[mine.start : mine.stop]
        plus, minus, ends = [], [], []
        for j in range(len(mine)):
            lp, cp = run(run.base + eps[j], starts[2 * j])
            lm, cm = run(run.base - eps[j], starts[2 * j + 1])
            plus.append(lp)
            minus.append(lm)
            ends += [cp, cm]
        return run, eps, plus, minus, ends

    def smoothed_gradient(self, plus: list[float], minus: list[float], directions: Tensor) -> Tensor:
        """:math:`\\frac{1}{2N\\sigma^2} \\sum_j d_j (L^+_j - L^-_j)` (flat) over the given pairs (this
        process's share of the sum; ``N`` counts all pairs)."""
        d = torch.tensor([lp - lm for lp, lm in zip(plus, minus)], dtype=directions.dtype)
        return (d[:, None] * directions).sum(0) / (2 * self.pairs * self.sigma**2)


@dataclass
class ESState(EstimatorState):
    """The one trajectory, advanced with the unperturbed weights."""


@register_estimator("es")
@dataclass(frozen=True)
class ES(AntitheticES):
    r"""Antithetic evolution strategies on the truncation (Gaussian smoothing):
    :math:`\hat g = \frac{1}{2N\sigma^2} \sum_{j=1}^{N} \epsilon_j (L(\phi+\epsilon_j) - L(\phi-\epsilon_j))`,
    :math:`\epsilon_j \sim N(0, \sigma^2 I)`, the gradient of the smoothed loss
    :math:`E_\epsilon L(\phi + \epsilon)`.

    All particles start from the same carry and see the same minibatches; the carry advances with
    :math:`\phi`. No backpropagation; biased by truncation like TBPTT.
    """

    def init(self, trainer: MetaTrainer) -> ESState:
        self.my_pairs(trainer)  # the processes can split the pairs
        return ESState(carries=[trainer.new_trajectory()])

    def estimate(self, trainer: MetaTrainer, state: ESState) -> tuple[float, list[Tensor], ESState]:
        carry = state.carries[0]
        run, eps, plus, minus, _ = self.antithetic_unrolls(trainer, [carry] * (2 * self.pairs))
        loss, carry = run(run.base, carry)  # every process advances the shared trajectory
        grad = unflatten_like(self.smoothed_gradient(plus, minus, eps), list(trainer.lopt.parameters()))
        grads, _ = trainer.all_reduce(grad)
        return loss, grads, ESState(carries=[carry])


@dataclass
class PESState(EstimatorState):
    """One trajectory per particle (``+`` and ``-`` of each pair, interleaved) and the perturbations each pair
    accumulated since its trajectory started."""

    xi: Tensor  # (N, P): xi_j = sum of eps_j over the truncations of the current trajectories

    sharded: ClassVar[bool] = True  # data-parallel: this process's pairs' particles and rows of xi


@register_estimator("pes")
@dataclass(frozen=True)
class PES(AntitheticES):
    r"""Persistent evolution strategies (Vicol, Metz & Sohl-Dickstein 2021): each antithetic particle keeps its
    own optimizee state across truncations and accumulates its perturbations :math:`\xi_j \mathrel{+}=
    \epsilon_j`; :math:`\hat g = \frac{1}{2N\sigma^2} \sum_j \xi_j (L^+_j - L^-_j)`, unbiased for the whole
    horizon. The reported loss is the mean of :math:`L^\pm_j`.
    """

    def init(self, trainer: MetaTrainer) -> PESState:
        carry = trainer.new_trajectory()
        base = flat_params(trainer.lopt)
        n = len(self.my_pairs(trainer))
        return PESState(carries=[carry] * (2 * n), xi=torch.zeros(n, base.numel(), dtype=base.dtype))

    def estimate(self, trainer: MetaTrainer, state: PESState) -> tuple[float, list[Tensor], PESState]:
        _, eps, plus, minus, ends = self.antithetic_unrolls(trainer, state.carries)
        xi = state.xi + eps
        total = 0.0
        for lp, lm in zip(plus, minus):
            total += lp + lm
        grad = unflatten_like(self.smoothed_gradient(plus, minus, xi), list(trainer.lopt.parameters()))
        grads, loss = trainer.all_reduce(grad, total / (2 * self.pairs))
        return loss, grads, PESState(carries=ends, xi=xi)


__all__ = [
    "ESTIMATORS",
    "EstimatorState",
    "MetaGradientEstimator",
    "register_estimator",
    "TBPTT",
    "TBPTTState",
    "ES",
    "ESState",
    "PES",
    "PESState",
    "AntitheticES",
    "PerturbedUnroll",
    "stagger_offsets",
    "flat_params",
    "unflatten_like",
]
