r"""Meta-training learned optimizers: truncated BPTT, antithetic ES and PES, with resumable checkpoints.

**Driving the solver with fresh minibatches.** An optimizee trajectory is the core solver loop with a new
context at every step. The solver state holds ``value`` and ``grad`` at the current iterate
:math:`\theta_t` *on the minibatch* :math:`x_t` *it was evaluated on*. One optimizee step is
``solver.step(problem, theta_t, x_{t+1}, state_t)``: it applies the learned update to ``state_t.grad``
(:math:`\nabla f(\theta_t; x_t)`), moves to :math:`\theta_{t+1}`, and evaluates
:math:`\nabla f(\theta_{t+1}; x_{t+1})` on the next minibatch, so every gradient is computed once, at the
iterate where it is used, on a minibatch drawn for that iterate (plain SGD semantics; no recomputation of the
old gradient on the new batch is needed). The state is carried across truncations, so the first step of a
truncation uses the gradient computed at the end of the previous one.

**Meta-objective.** :math:`L(\phi) = \frac{1}{KB}\sum_{t} \sum_b w_t f(\theta^{(b)}_t; x'_t)` over the
:math:`K` steps of a truncation, with :math:`x'_t` an independent held-out minibatch (``Task.eval_batch``)
and :math:`w_t = 1` (Andrychowicz et al. 2016, Eq. 3).

**Methods** (each turns a truncation of ``K`` steps of a horizon of ``T`` steps into a meta-gradient that
Adam applies):

* ``"tbptt"``: backpropagate through the ``K`` steps; optimizee and optimizer states are carried (detached)
  to the next truncation; memory is that of ``K`` steps, independent of ``T``. With ``second_order=False``
  the optimizee gradient is a constant input (the paper's simplification).
  With ``stagger = G > 1`` the ``B`` optimizees form ``G`` groups whose trajectories start
  ``T / G`` steps apart (each group is advanced without gradient to its offset when it is first drawn,
  and restarts on its own when it reaches ``T``), so every meta-gradient averages truncations from
  ``G`` phases of training instead of all ``B`` optimizees being at the same step. Without it
  consecutive meta-steps cycle through the phases (steps 1-K, then K+1-2K, ...), each meta-gradient
  seeing one phase only (learned_optimization desynchronizes its truncated trajectories with a random
  initial iteration offset for the same reason).
* ``"es"``: antithetic evolution strategies on the truncation, :math:`\hat g = \frac{1}{2N\sigma^2}
  \sum_{j=1}^{N} \epsilon_j (L(\phi+\epsilon_j) - L(\phi-\epsilon_j))`,
  :math:`\epsilon_j \sim N(0, \sigma^2 I)`,
  all particles start from the same carry and see the same minibatches; the carry advances with :math:`\phi`.
  No backpropagation; biased by truncation like TBPTT.
* ``"pes"``: persistent evolution strategies (Vicol, Metz & Sohl-Dickstein 2021): each antithetic particle
  keeps its own optimizee state across truncations and accumulates its perturbations
  :math:`\xi_j \mathrel{+}= \epsilon_j`; :math:`\hat g = \frac{1}{2N\sigma^2} \sum_j \xi_j (L^+_j - L^-_j)`,
  unbiased for the whole horizon.

A meta-step whose meta-gradient (or ES loss) is non-finite is skipped, counted in ``skipped`` and never
applied; the trajectory that produced it is reset.

References:
    M. Andrychowicz et al., "Learning to learn by gradient descent by gradient descent", NeurIPS 2016.
    P. Vicol, L. Metz, J. Sohl-Dickstein, "Unbiased gradient estimation in unrolled computation graphs with
    persistent evolution strategies", ICML 2021.
    T. Salimans et al., "Evolution strategies as a scalable alternative to reinforcement learning", 2017.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._tree import tree_detach, tree_map, tree_tensors, tree_unflatten
from ..solvers import Solver
from ._base import LearnedOptimizer, atomic_save
from ._tasks import Task

_METHODS = ("tbptt", "es", "pes")


@dataclass
class Carry:
    """An optimizee trajectory between truncations: iterate, solver state, task instance data, step."""

    y: Tensor
    state: Any
    inst: Any
    t: Tensor  # 0-d int64


def start_trajectory(solver: Solver, task: Task, batch: int, generator: torch.Generator) -> Carry:
    """Draw ``batch`` new optimizees and evaluate the gradient at :math:`\\theta_0` on a first minibatch."""
    inst, y0 = task.reset(batch, generator)
    x0 = task.train_batch(inst, generator)
    with torch.no_grad():
        state = solver.init(task.problem, y0, x0)
    return Carry(y0, state, inst, torch.zeros((), dtype=torch.int64))


def unroll(
    solver: Solver,
    task: Task,
    carry: Carry,
    steps: int,
    generator: torch.Generator,
    eval_fn: Callable[[Tensor, Any], Tensor] | None = None,
) -> tuple[Tensor, Carry]:
    """Run ``steps`` optimizee steps from ``carry`` with a fresh minibatch each step.

    Returns ``(losses (steps, B), new_carry)``: ``losses[k]`` is the objective at :math:`\\theta_{t+k+1}` on a
    held-out batch (``task.eval_batch``), or ``eval_fn(theta, inst)`` if given. Differentiable with respect
    to the optimizer's weights when grad mode is on.
    """
    y, state = carry.y, carry.state
    losses = []
    for _ in range(steps):
        x = task.train_batch(carry.inst, generator)
        y, state = solver.step(task.problem, y, x, state)
        if eval_fn is None:
            losses.append(task.problem.objective(y, task.eval_batch(carry.inst, generator)))
        else:
            losses.append(eval_fn(y, carry.inst))
    return torch.stack(losses), Carry(y, state, carry.inst, carry.t + steps)


def _finite_carry(c: Carry) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tree_tensors((c.y, c.state)) if t.is_floating_point())


@dataclass
class MetaConfig:
    """Meta-training configuration (saved in checkpoints; resuming requires the same one)."""

    method: str = "tbptt"  # "tbptt" | "es" | "pes"
    unroll: int = 20  # truncation length K (optimizee steps per meta-step)
    horizon: int = 100  # optimizee steps per trajectory T (a new trajectory starts after T steps)
    batch: int = 16  # optimizees per trajectory B
    meta_lr: float = 3e-3  # Adam learning rate on the optimizer's weights
    clip: float = 1.0  # meta-gradient norm clipping (0: none)
    second_order: bool = False  # TBPTT: backpropagate through the optimizee gradients too
    es_pairs: int = 8  # ES/PES: antithetic pairs N
    es_sigma: float = 0.01  # ES/PES: perturbation standard deviation sigma
    seed: int = 0  # seeds the task generator (instances, minibatches) and the ES generator
    weight_halflife: float = 0.0  # meta-objective weights w_t = 2^(-(t-1)/halflife) (0: uniform, the paper's)
    log_loss: bool = False  # meta-objective on log f(theta_t) (every phase of the run counts, not just the start)
    meta_lr_decay: int = 0  # cosine decay of meta_lr to 0 over this many meta-steps (0: constant meta_lr)
    stagger: int = 1  # TBPTT: split the batch into this many groups whose trajectories are at different phases

    def __post_init__(self):
        if self.method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {self.method!r}")
        if self.unroll < 1 or self.horizon < 1 or self.batch < 1:
            raise ValueError(f"unroll, horizon and batch must be >= 1, got {self.unroll}, {self.horizon}, {self.batch}")
        if self.horizon % self.unroll:
            raise ValueError(f"horizon ({self.horizon}) must be a multiple of unroll ({self.unroll})")
        if not self.meta_lr > 0 or not self.es_sigma > 0 or self.es_pairs < 1:
            raise ValueError("meta_lr and es_sigma must be > 0 and es_pairs >= 1")
        if self.meta_lr_decay < 0:
            raise ValueError(f"meta_lr_decay must be >= 0 meta-steps, got {self.meta_lr_decay}")
        if not self.weight_halflife >= 0 or not math.isfinite(self.weight_halflife):
            raise ValueError(f"weight_halflife must be a finite number >= 0, got {self.weight_halflife}")
        if self.stagger < 1 or self.batch % self.stagger or self.stagger > self.horizon // self.unroll:
            raise ValueError(
                f"stagger must be >= 1, divide batch ({self.batch}) and be at most horizon / unroll "
                f"({self.horizon // self.unroll}), got {self.stagger}"
            )
        if self.stagger > 1 and self.method != "tbptt":
            raise ValueError(f"stagger applies to method 'tbptt' only, got method {self.method!r}")

    def stagger_offsets(self) -> list[int]:
        """Starting step of each of the ``stagger`` trajectory groups: truncation boundaries spread evenly
        over the horizon.

        Example:
            >>> MetaConfig(unroll=20, horizon=100, batch=10, stagger=5).stagger_offsets()
            [0, 20, 40, 60, 80]
        """
        n = self.horizon // self.unroll
        return [(g * n // self.stagger) * self.unroll for g in range(self.stagger)]

    def meta_lr_at(self, meta_step: int) -> float:
        r"""Meta learning rate of meta-step ``meta_step`` (0-based): constant, or with ``meta_lr_decay = D``
        :math:`\eta_s = \eta\,\tfrac12 (1 + \cos(\pi \min(s, D) / D))` (a function of the step alone, so a
        resumed run follows the same schedule).

        Example:
            >>> c = MetaConfig(meta_lr=1e-3, meta_lr_decay=100)
            >>> c.meta_lr_at(0), round(c.meta_lr_at(50), 6), c.meta_lr_at(100)
            (0.001, 0.0005, 0.0)
        """
        if self.meta_lr_decay == 0:
            return self.meta_lr
        frac = min(meta_step, self.meta_lr_decay) / self.meta_lr_decay
        return self.meta_lr * 0.5 * (1.0 + math.cos(math.pi * frac))

    def step_weights(self, t0: int, steps: int) -> Tensor:
        """Meta-objective weights of optimizee steps ``t0 + 1 .. t0 + steps`` (float64, shape ``(steps,)``).

        The meta-loss of a truncation is :math:`\\frac{1}{KB} \\sum_{k,b} w_{t_0+k}\\, f_b(\\theta_{t_0+k})`
        with :math:`w_t = 2^{-(t-1)/h} / \\bar w` for half-life :math:`h > 0`, normalized so the mean weight
        over the horizon :math:`t = 1..T` is 1 (so the meta-loss scale, and hence the meta-learning rate, stay
        comparable with the uniform weights :math:`w_t = 1` of Andrychowicz et al. 2016, used when
        :math:`h = 0`). A decreasing :math:`w_t` emphasizes the early steps (how fast the optimizer gets
        down) over the late ones.

        Example:
            >>> MetaConfig(unroll=2, horizon=4, weight_halflife=1.0).step_weights(0, 2)
            tensor([2.1333, 1.0667], dtype=torch.float64)
        """
        t = torch.arange(t0 + 1, t0 + steps + 1, dtype=torch.float64)
        if self.weight_halflife == 0:
            return torch.ones_like(t)
        all_t = torch.arange(1, self.horizon + 1, dtype=torch.float64)
        decay = math.log(2.0) / self.weight_halflife
        return torch.exp(-decay * (t - 1)) / torch.exp(-decay * (all_t - 1)).mean()

    def weighted_loss(self, losses: Tensor, t0: int) -> Tensor:
        """Meta-loss of a truncation: ``losses (K, B)`` at steps ``t0 + 1 ..``, weighted by :meth:`step_weights`.

        With ``log_loss`` the summand is :math:`\\log(f_b(\\theta_t) + 10^{-8})` instead of :math:`f_b(\\theta_t)`.
        The plain sum is dominated by the first steps, where the loss is largest (on the digits task the loss
        falls 100-fold in 100 steps), so the late steps barely shape the optimizer. The log weighs a 10%
        improvement equally at every step. It is the usual choice in learned_optimization, and it needs
        losses >= 0 (cross-entropy, squared error).

        Example:
            >>> round(float(MetaConfig(log_loss=True).weighted_loss(torch.tensor([[1.0], [0.01]]), 0)), 4)
            -2.3026
        """
        if self.log_loss:
            losses = torch.log(losses + 1e-8)
        if self.weight_halflife == 0:
            return losses.mean()
        w = self.step_weights(t0, losses.shape[0]).to(losses.dtype)
        return (w[:, None] * losses).mean()


@dataclass
class MetaStepInfo:
    loss: float  # meta-loss of the truncation (mean over steps and optimizees)
    skipped: bool  # True if the meta-gradient was non-finite and not applied
    grad_norm: float  # meta-gradient norm before clipping (nan if skipped)
    saved_bytes: int  # bytes of tensors saved for backward during this meta-step (TBPTT; 0 for ES/PES)


@dataclass
class MetaTrainer:
    """Meta-trains ``lopt`` on ``task``; :meth:`step` does one meta-step (one truncation).

    Example:
        >>> import doubleopt as do
        >>> from doubleopt.learned.meta import MetaConfig, MetaTrainer
        >>> tr = MetaTrainer(do.learned.LSTMOptimizer(), do.learned.QuadraticTask(),
        ...                  MetaConfig(unroll=5, horizon=10, batch=4))
        >>> info = tr.step()
        >>> info.skipped, tr.meta_step
        (False, 1)
    """

    lopt: LearnedOptimizer
    task: Task
    config: MetaConfig = field(default_factory=MetaConfig)

    def __post_init__(self):
        c = self.config
        self.solver = self.lopt.as_solver(detach_grad=not c.second_order)
        self.meta_opt = torch.optim.Adam(self.lopt.parameters(), lr=c.meta_lr)
        self.gen = torch.Generator().manual_seed(c.seed)
        self.es_gen = torch.Generator().manual_seed(c.seed + 1_000_003)
        self.meta_step = 0
        self.skipped = 0
        self.trajectories = 0
        self.losses: list[float] = []
        self.peak_saved_bytes = 0
        self._scratch = copy.deepcopy(self.lopt) if c.method != "tbptt" else None
        self.carry: Carry | None = None
        self.groups: list[Carry] = []  # stagger > 1: one carry per group (self.carry is groups[0])
        self.particles: list[Carry] = []
        self.xi: Tensor | None = None
        self._reset()

    # ---- trajectories --------------------------------------------------------------------------
    def _reset(self) -> None:
        if self.config.stagger > 1:
            self.groups = [self._start_group(offset) for offset in self.config.stagger_offsets()]
            self.carry = self.groups[0]
            return
        self.trajectories += 1
        self.carry = start_trajectory(self.solver, self.task, self.config.batch, self.gen)
        if self.config.method == "pes":
            self.particles = [self.carry for _ in range(2 * self.config.es_pairs)]
            self.xi = torch.zeros(self.config.es_pairs, self._n_params(), dtype=self._flat().dtype)

    def _start_group(self, offset: int) -> Carry:
        """A new trajectory for one stagger group, advanced without gradient to step ``offset``."""
        self.trajectories += 1
        carry = start_trajectory(self.solver, self.task, self.config.batch // self.config.stagger, self.gen)
        if offset:
            with torch.no_grad():
                _, carry = unroll(self.solver, self.task, carry, offset, self.gen)
        return carry

    def _n_params(self) -> int:
        return sum(p.numel() for p in self.lopt.parameters())

    def _flat(self) -> Tensor:
        return torch.nn.utils.parameters_to_vector(self.lopt.parameters()).detach()

    def _run_perturbed(self, flat: Tensor, carry: Carry, gen_state: Tensor) -> tuple[float, Carry]:
        torch.nn.utils.vector_to_parameters(flat, self._scratch.parameters())
        self.gen.set_state(gen_state)
        solver = self._scratch.as_solver(detach_grad=True)
        with torch.no_grad():
            losses, new = unroll(solver, self.task, carry, self.config.unroll, self.gen)
        return float(self.config.weighted_loss(losses, int(carry.t))), new

    # ---- meta-gradients ----------------------------------------------------------------------
    def _tbptt(self) -> tuple[float, list[Tensor], int]:
        saved = [0]

        def pack(t):
            saved[0] += t.numel() * t.element_size()
            return t

        params = list(self.lopt.parameters())
        carries = self.groups if self.config.stagger > 1 else [self.carry]
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss, new = 0.0, []
            for carry in carries:  # equal group sizes: the mean of the group means is the mean over all B
                t0 = int(carry.t)
                losses, nxt = unroll(self.solver, self.task, carry, self.config.unroll, self.gen)
                loss = loss + self.config.weighted_loss(losses, t0) / len(carries)
                new.append(tree_detach(nxt))
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        if self.config.stagger > 1:
            self.groups = new
        self.carry = new[0]
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        return float(loss.detach()), grads, saved[0]

    def _es(self) -> tuple[float, Tensor]:
        c = self.config
        base, s0 = self._flat(), self.gen.get_state()
        eps = c.es_sigma * torch.randn(c.es_pairs, base.numel(), generator=self.es_gen, dtype=base.dtype)
        diffs = []
        for j in range(c.es_pairs):
            lp, _ = self._run_perturbed(base + eps[j], self.carry, s0)
            lm, _ = self._run_perturbed(base - eps[j], self.carry, s0)
            diffs.append(lp - lm)
        loss, self.carry = self._run_perturbed(base, self.carry, s0)
        d = torch.tensor(diffs, dtype=eps.dtype)
        return loss, (d[:, None] * eps).sum(0) / (2 * c.es_pairs * c.es_sigma**2)

    def _pes(self) -> tuple[float, Tensor]:
        c = self.config
        base, s0 = self._flat(), self.gen.get_state()
        eps = c.es_sigma * torch.randn(c.es_pairs, base.numel(), generator=self.es_gen, dtype=base.dtype)
        self.xi = self.xi + eps
        diffs, total = [], 0.0
        for j in range(c.es_pairs):
            lp, self.particles[2 * j] = self._run_perturbed(base + eps[j], self.particles[2 * j], s0)
            lm, self.particles[2 * j + 1] = self._run_perturbed(base - eps[j], self.particles[2 * j + 1], s0)
            diffs.append(lp - lm)
            total += lp + lm
        self.carry = self.particles[0]
        d = torch.tensor(diffs, dtype=eps.dtype)
        return total / (2 * c.es_pairs), (d[:, None] * self.xi).sum(0) / (2 * c.es_pairs * c.es_sigma**2)

    def meta_gradient(self) -> tuple[float, list[Tensor], int]:
        """``(loss, grads per parameter, saved_bytes)`` for the next truncation; advances the carry."""
        if self.config.method == "tbptt":
            return self._tbptt()
        loss, flat = self._es() if self.config.method == "es" else self._pes()
        grads, k = [], 0
        for p in self.lopt.parameters():
            grads.append(flat[k : k + p.numel()].reshape(p.shape).to(p.dtype))
            k += p.numel()
        return loss, grads, 0

    def step(self) -> MetaStepInfo:
        """One meta-step: meta-gradient of one truncation, skip if non-finite, else clip and apply Adam."""
        loss, grads, saved = self.meta_gradient()
        self.peak_saved_bytes = max(self.peak_saved_bytes, saved)
        finite = math.isfinite(loss) and all(bool(torch.isfinite(g).all()) for g in grads)
        gnorm = float("nan")
        if finite:
            gnorm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
            scale = min(1.0, self.config.clip / (gnorm + 1e-12)) if self.config.clip > 0 else 1.0
            for p, g in zip(self.lopt.parameters(), grads):
                p.grad = g * scale
            for group in self.meta_opt.param_groups:
                group["lr"] = self.config.meta_lr_at(self.meta_step)
            self.meta_opt.step()
            self.meta_opt.zero_grad(set_to_none=True)
        else:
            self.skipped += 1
        self.meta_step += 1
        self.losses.append(loss)
        if self.config.stagger > 1:
            if not finite or not all(_finite_carry(c) for c in self.groups):
                self._reset()
            else:  # each group restarts on its own at the end of its horizon
                self.groups = [self._start_group(0) if int(c.t) >= self.config.horizon else c for c in self.groups]
                self.carry = self.groups[0]
            return MetaStepInfo(loss, not finite, gnorm, saved)
        carries = self.particles if self.config.method == "pes" else [self.carry]
        if not finite or int(self.carry.t) >= self.config.horizon or not all(_finite_carry(c) for c in carries):
            self._reset()
        return MetaStepInfo(loss, not finite, gnorm, saved)

    # ---- checkpoints ---------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, Tensor]:
        """Everything needed to continue bit-for-bit: weights, Adam state, generators, trajectories."""
        out = {f"lopt.{k}": v.detach().clone() for k, v in self.lopt.state_dict().items()}
        for i, st in self.meta_opt.state_dict()["state"].items():
            for k, v in st.items():
                out[f"metaopt.{i}.{k}"] = torch.as_tensor(v).clone()
        out["gen.task"] = self.gen.get_state()
        out["gen.es"] = self.es_gen.get_state()
        out["counters"] = torch.tensor([self.meta_step, self.skipped, self.trajectories], dtype=torch.int64)
        out["losses"] = torch.tensor(self.losses, dtype=torch.float64)
        out["peak_saved_bytes"] = torch.tensor(self.peak_saved_bytes, dtype=torch.int64)
        carries = self.particles if self.config.method == "pes" else (self.groups or [self.carry])
        for j, c in enumerate(carries):
            for i, t in enumerate(tree_tensors(c)):
                out[f"carry.{j}.{i}"] = t.detach().clone().contiguous()
        if self.xi is not None:
            out["pes.xi"] = self.xi.clone()
        return out

    def load_state_tensors(self, d: dict[str, Tensor]) -> None:
        self.lopt.load_state_dict({k[5:]: v for k, v in d.items() if k.startswith("lopt.")})
        sd = self.meta_opt.state_dict()
        state: dict[int, dict[str, Tensor]] = {}
        for k, v in d.items():
            if k.startswith("metaopt."):
                _, i, name = k.split(".", 2)
                state.setdefault(int(i), {})[name] = v
        sd["state"] = state
        self.meta_opt.load_state_dict(sd)
        self.gen.set_state(d["gen.task"])
        self.es_gen.set_state(d["gen.es"])
        self.meta_step, self.skipped, self.trajectories = (int(v) for v in d["counters"])
        self.losses = d["losses"].tolist()
        self.peak_saved_bytes = int(d["peak_saved_bytes"])
        template = start_trajectory(self.solver, self.task, self.config.batch, torch.Generator().manual_seed(0))
        n_leaves = len(tree_tensors(template))
        carries = []
        j = 0
        while f"carry.{j}.0" in d:
            carries.append(tree_unflatten(template, [d[f"carry.{j}.{i}"] for i in range(n_leaves)]))
            j += 1
        if self.config.method == "pes":
            self.particles, self.carry, self.xi = carries, carries[0], d["pes.xi"].clone()
        elif self.config.stagger > 1:
            self.groups, self.carry = carries, carries[0]
        else:
            self.carry = carries[0]


def save_checkpoint(trainer: MetaTrainer, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> None:
    """Atomically write the trainer's state (safetensors; config and architecture in the metadata)."""
    meta = {
        "config": json.dumps(asdict(trainer.config)),
        "arch": trainer.lopt.arch,
        "lopt_config": json.dumps(trainer.lopt.config()),
        "task": trainer.task.name,
        **{k: json.dumps(v) for k, v in (extra or {}).items()},
    }
    atomic_save(trainer.state_tensors(), Path(path), meta)


def load_checkpoint(trainer: MetaTrainer, path: str | os.PathLike) -> None:
    """Restore a trainer from :func:`save_checkpoint`; the config, architecture and task must match."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    mine = {
        "config": asdict(trainer.config),
        "arch": trainer.lopt.arch,
        "lopt_config": trainer.lopt.config(),
        "task": trainer.task.name,
    }
    theirs = {
        # checkpoints written before weight_halflife / log_loss / meta_lr_decay / stagger existed: uniform
        # weights on f, constant meta_lr, trajectories in lockstep
        "config": {
            "weight_halflife": 0.0,
            "log_loss": False,
            "meta_lr_decay": 0,
            "stagger": 1,
            **json.loads(meta.get("config", "{}")),
        },
        "arch": meta.get("arch"),
        "lopt_config": json.loads(meta.get("lopt_config", "{}")),
        "task": meta.get("task"),
    }
    for k in mine:
        if mine[k] != theirs[k]:
            raise ValueError(
                f"checkpoint {path} was written with {k} = {theirs[k]!r} but this run has {mine[k]!r}; "
                "resume with the same arguments"
            )
    trainer.load_state_tensors(tensors)


def meta_train(
    trainer: MetaTrainer,
    meta_steps: int,
    *,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 50,
    resume: bool = False,
    progress: bool = True,
    callback: Callable[[MetaTrainer, MetaStepInfo], None] | None = None,
) -> MetaTrainer:
    """Run meta-steps until ``trainer.meta_step == meta_steps``, checkpointing every ``checkpoint_every``.

    With ``resume=True`` and an existing ``checkpoint`` file, training continues from it and ends with the
    same weights as an uninterrupted run (same seed, same threads). Shows a tqdm bar (meta-loss, skipped
    steps, rate, ETA).
    """
    if resume and checkpoint is not None and Path(checkpoint).exists():
        load_checkpoint(trainer, checkpoint)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=meta_steps,
            initial=trainer.meta_step,
            desc=f"meta-train[{trainer.config.method}]",
            unit="meta-step",
        )
    ema = None
    start = time.perf_counter()
    try:
        while trainer.meta_step < meta_steps:
            info = trainer.step()
            if math.isfinite(info.loss):
                ema = info.loss if ema is None else 0.95 * ema + 0.05 * info.loss
            if checkpoint is not None and (
                trainer.meta_step % checkpoint_every == 0 or trainer.meta_step == meta_steps
            ):
                save_checkpoint(trainer, checkpoint)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(
                    meta_loss=f"{ema:.4f}" if ema is not None else "nan",
                    skipped=trainer.skipped,
                    refresh=False,
                )
            if callback is not None:
                callback(trainer, info)
    finally:
        if bar is not None:
            bar.close()
    trainer.wall_time = time.perf_counter() - start
    return trainer


def rollout(
    solver: Solver,
    task: Task,
    batch: int,
    steps: int,
    generator: torch.Generator,
    eval_fn: Callable[[Tensor, Any], Tensor] | None = None,
) -> Tensor:
    """Losses ``(steps + 1, batch)`` of ``solver`` (learned or classical) over a fresh trajectory, no grad.

    Row 0 is the loss at :math:`\\theta_0`. ``eval_fn(theta, inst)`` defaults to a held-out minibatch loss.
    """
    with torch.no_grad():
        carry = start_trajectory(solver, task, batch, generator)
        first = (
            eval_fn(carry.y, carry.inst)
            if eval_fn is not None
            else task.problem.objective(carry.y, task.eval_batch(carry.inst, generator))
        )
        losses, _ = unroll(solver, task, carry, steps, generator, eval_fn)
    return torch.cat([first[None], losses])


__all__ = [
    "Carry",
    "MetaConfig",
    "MetaStepInfo",
    "MetaTrainer",
    "start_trajectory",
    "unroll",
    "rollout",
    "meta_train",
    "save_checkpoint",
    "load_checkpoint",
    "tree_map",
]
