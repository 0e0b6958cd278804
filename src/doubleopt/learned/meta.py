r"""Meta-training learned optimizers: the trainer, its configuration, the training loop and resumable checkpoints.

:class:`MetaTrainer` drives optimizee trajectories (:mod:`doubleopt.learned.trajectory`: the core solver loop
with a fresh minibatch at every step) and, at every meta-step, asks its meta-gradient estimator
(:mod:`doubleopt.learned.estimators`: ``"tbptt"``, ``"es"``, ``"pes"``, chosen by ``MetaConfig.method``) for
the meta-gradient of one truncation of ``K`` steps of a horizon of ``T`` steps, which it clips and applies
with Adam.

**Meta-objective.** :math:`L(\phi) = \frac{1}{KB}\sum_{t} \sum_b w_t f(\theta^{(b)}_t; x'_t)` over the
:math:`K` steps of a truncation, with :math:`x'_t` an independent held-out minibatch (``Task.eval_batch``)
and :math:`w_t = 1` (Andrychowicz et al. 2016, Eq. 3), or the weights of :meth:`MetaConfig.step_weights`.

A meta-step whose meta-gradient (or ES loss) is non-finite is skipped, counted in ``skipped`` and never
applied; the trajectory that produced it is reset.

**Data-parallel training.** With ``comm`` (a :class:`~doubleopt.distributed.Comm` from
:func:`~doubleopt.distributed.init_from_env`, e.g. under ``torchrun``) every process holds the learned optimizer
and its Adam state and computes part of the meta-gradient: TBPTT splits the batch into ``config.shards`` streams
(each drawn from its own generator, :func:`~doubleopt.distributed.stream_generator`) and each process advances
``shards / N`` of them; ES and PES split the antithetic pairs. The parts are summed with one ``all_reduce``,
so every process applies the same update and ``N`` processes end with the weights of one process running all
streams (or pairs). A non-finite meta-gradient on any process makes every process skip the step. Rank 0 writes
checkpoints (each process's trajectories and generators are gathered into it) and shows the progress bar.

Checkpoints carry a SHA-256 checksum of their tensors; writing one keeps the previous one
(``<name>.prev.safetensors``), and resuming falls back to it when the latest is truncated or corrupt.

References:
    M. Andrychowicz et al., "Learning to learn by gradient descent by gradient descent", NeurIPS 2016.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._tree import tree_map, tree_tensors, tree_unflatten
from ..distributed import Comm, check_same, run_identity, stream_generator, tensor_digest
from ._base import LearnedOptimizer, atomic_save, read_safetensors
from ._tasks import Task
from .estimators import ESTIMATORS, EstimatorState, MetaGradientEstimator, PESState, stagger_offsets
from .trajectory import Carry, rollout, start_trajectory, unroll


@dataclass
class MetaConfig:
    """Meta-training configuration (saved in checkpoints; resuming requires the same one)."""

    method: str = "tbptt"  # meta-gradient estimator, a name in estimators.ESTIMATORS: "tbptt" | "es" | "pes"
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
    shards: int = 1  # TBPTT: draw the batch as this many random streams (data-parallel processes split them)
    # settings of the estimator's own dataclass fields by name (e.g. GPS {"kl_step": 0.5}); see its class
    options: dict[str, float | int | bool] = field(default_factory=dict)

    def __post_init__(self):
        if self.method not in ESTIMATORS:
            raise ValueError(f"method must be one of {tuple(ESTIMATORS)}, got {self.method!r}")
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
        if self.shards < 1 or self.batch % (self.shards * self.stagger):
            raise ValueError(
                f"shards must be >= 1 and shards x stagger must divide batch ({self.batch}), got shards "
                f"{self.shards}, stagger {self.stagger}"
            )
        ESTIMATORS[self.method].from_config(self)  # the estimator checks the settings it uses

    def stagger_offsets(self) -> list[int]:
        """Starting step of each of the ``stagger`` trajectory groups: truncation boundaries spread evenly
        over the horizon.

        Example:
            >>> MetaConfig(unroll=20, horizon=100, batch=10, stagger=5).stagger_offsets()
            [0, 20, 40, 60, 80]
        """
        return stagger_offsets(self.stagger, self.unroll, self.horizon)

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

    The meta-gradient comes from ``estimator`` (built from ``config.method`` by the registry
    :data:`~doubleopt.learned.estimators.ESTIMATORS`); ``state`` is the estimator's state (its trajectories).

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
    comm: Comm = field(default_factory=Comm)  # data-parallel processes (doubleopt.distributed); default: one

    def __post_init__(self):
        c = self.config
        if self.comm.world > 1:  # first: a setting that differs by process must not fail on one process only
            self.check_same_run()
        parallel = ESTIMATORS[c.method].data_parallel
        if self.comm.world > 1 and not parallel:
            raise ValueError(
                f"method {c.method!r} does not support data-parallel training ({self.comm.world} processes); "
                f"methods that do: {sorted(k for k, v in ESTIMATORS.items() if v.data_parallel)}"
            )
        self.solver = self.lopt.as_solver(detach_grad=not c.second_order)
        self.meta_opt = torch.optim.Adam(self.lopt.parameters(), lr=c.meta_lr)
        # the random streams of tasks, instances and minibatches this process draws: TBPTT splits its shards
        # across processes; the other estimators draw one stream, the same on every process
        self.streams = self.comm.shard(c.shards, even=True, what="shards") if parallel == "batch" else range(1)
        self.gens = [stream_generator(c.seed, s) for s in self.streams]
        self.gen = self.gens[0]
        self.es_gen = torch.Generator().manual_seed(c.seed + 1_000_003)  # the estimator's own noise
        self.meta_step = 0
        self.skipped = 0
        self.trajectories = 0
        self.losses: list[float] = []
        self.peak_saved_bytes = 0
        self.estimator: MetaGradientEstimator = ESTIMATORS[c.method].from_config(c)
        self.state: EstimatorState = self.estimator.init(self)

    def check_same_run(self) -> None:
        """Start-up check of a data-parallel run: configuration, architecture, shapes, initial weights, task
        and code must agree on every process (a ``ValueError`` naming the difference otherwise)."""
        sd = self.lopt.state_dict()
        check_same(
            self.comm,
            run_identity(
                **{f"config.{k}": v for k, v in asdict(self.config).items()},
                arch=self.lopt.arch,
                lopt_config=self.lopt.config(),
                shapes={k: [list(v.shape), str(v.dtype)] for k, v in sd.items()},
                initial_weights=tensor_digest(list(sd.values())),
                task=self.task.name,
                processes=self.comm.world,
            ),
            what="meta-training configuration",
        )

    # ---- trajectories --------------------------------------------------------------------------
    def new_trajectory(self, batch: int | None = None, offset: int = 0, stream: int = 0) -> Carry:
        """A new trajectory of ``batch`` optimizees (default ``config.batch``) drawn from this process's random
        stream ``gens[stream]``, advanced without gradient to step ``offset``; counted in ``trajectories`` (of
        this process). Estimators start their trajectories with it."""
        self.trajectories += 1
        gen = self.gens[stream]
        carry = start_trajectory(self.solver, self.task, self.config.batch if batch is None else batch, gen)
        if offset:
            with torch.no_grad():
                _, carry = unroll(self.solver, self.task, carry, offset, gen)
        return carry

    @property
    def carry(self) -> Carry:
        """The estimator's first trajectory (TBPTT: the first group; PES: the first particle)."""
        return self.state.carries[0]

    @property
    def groups(self) -> list[Carry]:
        """TBPTT with ``stagger > 1``: one trajectory per group (else ``[]``)."""
        return self.state.carries if self.config.stagger > 1 else []

    @property
    def particles(self) -> list[Carry]:
        """PES: one trajectory per particle (else ``[]``)."""
        return self.state.carries if isinstance(self.state, PESState) else []

    # ---- meta-steps ----------------------------------------------------------------------------
    def all_reduce(self, grads: list[Tensor], loss: float | None = None) -> tuple[list[Tensor], float | None]:
        """Sum this process's parts of the meta-gradient (and of the loss, unless ``None``: the same on every
        process) over the processes, in one ``all_reduce``; the identity with one process."""
        if self.comm.world == 1:
            return grads, loss
        parts = self.comm.sum([*grads, *([] if loss is None else [torch.tensor(loss, dtype=torch.float64)])])
        return parts[: len(grads)], loss if loss is None else float(parts[-1])

    def meta_gradient(self) -> tuple[float, list[Tensor], int]:
        """``(loss, grads per parameter, saved_bytes)`` for the next truncation; advances the trajectories."""
        saved = [0]

        def pack(t):
            saved[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss, grads, self.state = self.estimator.estimate(self, self.state)
        return loss, grads, saved[0]

    def step(self) -> MetaStepInfo:
        """One meta-step: meta-gradient of one truncation, skip if non-finite, else clip and apply Adam."""
        loss, grads, saved = self.meta_gradient()
        self.peak_saved_bytes = max(self.peak_saved_bytes, saved)
        finite = math.isfinite(loss) and all(bool(torch.isfinite(g).all()) for g in grads)
        finite = self.comm.all(finite)  # one process's non-finite step is every process's skipped step
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
        self.state = self.estimator.restart(self, self.state, finite)
        return MetaStepInfo(loss, not finite, gnorm, saved)

    # ---- checkpoints ---------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, Tensor]:
        """Everything needed to continue bit-for-bit: weights, Adam state, generators (``gen.task`` for stream 0,
        ``gen.task.<s>`` for stream ``s``), trajectories (``carry.<j>.<leaf>``) and the estimator state's tensors
        (``<method>.<field>``).

        Data-parallel: every process must call it (the processes' streams, trajectories and sharded state
        fields are gathered, in rank order); the result is the same on every process and does not depend on the
        number of processes."""
        out = {f"lopt.{k}": v.detach().clone() for k, v in self.lopt.state_dict().items()}
        for i, st in self.meta_opt.state_dict()["state"].items():
            for k, v in st.items():
                out[f"metaopt.{i}.{k}"] = torch.as_tensor(v).clone()
        for s, st in enumerate(self._in_rank_order([g.get_state() for g in self.gens], self.sharded_streams)):
            out["gen.task" if s == 0 else f"gen.task.{s}"] = st
        out["gen.es"] = self.es_gen.get_state()
        out["counters"] = torch.tensor([self.meta_step, self.skipped, self.trajectories], dtype=torch.int64)
        out["losses"] = torch.tensor(self.losses, dtype=torch.float64)
        out["peak_saved_bytes"] = torch.tensor(self.peak_saved_bytes, dtype=torch.int64)
        sharded = self.state.sharded
        for j, c in enumerate(self._in_rank_order(self.state.carries, sharded)):
            for i, t in enumerate(tree_tensors(c)):
                out[f"carry.{j}.{i}"] = t.detach().clone().contiguous()
        for f in fields(self.state):
            if f.name != "carries":
                v = getattr(self.state, f.name)
                out[f"{self.config.method}.{f.name}"] = (self.comm.gather_rows(v) if sharded else v).clone()
        return out

    @property
    def sharded_streams(self) -> bool:
        """Whether each process draws its own part of the random streams (TBPTT) or all draw the same one."""
        return ESTIMATORS[self.config.method].data_parallel == "batch"

    def _in_rank_order(self, local: list[Any], sharded: bool) -> list[Any]:
        """The whole list of which each process holds the equal-length part ``local`` (rank 0's part first);
        ``local`` itself if not ``sharded`` (the same on every process) or with one process."""
        if not sharded or self.comm.world == 1:
            return list(local)
        leaves = [[self.comm.gather(t) for t in tree_tensors(item)] for item in local]  # [item][leaf][rank]
        return [
            tree_unflatten(item, [per_rank[r] for per_rank in leaves[k]])
            for r in range(self.comm.world)
            for k, item in enumerate(local)
        ]

    def _my_part(self, whole: list[Any], sharded: bool) -> list[Any]:
        """This process's contiguous part of ``whole`` (all of it if not ``sharded``)."""
        if not sharded:
            return whole
        part = self.comm.shard(len(whole), even=True, what="checkpointed trajectories")
        return whole[part.start : part.stop]

    def load_state_tensors(self, d: dict[str, Tensor]) -> None:
        """Restore :meth:`state_tensors` (data-parallel: each process takes its own part)."""
        self.lopt.load_state_dict({k[5:]: v for k, v in d.items() if k.startswith("lopt.")})
        sd = self.meta_opt.state_dict()
        state: dict[int, dict[str, Tensor]] = {}
        for k, v in d.items():
            if k.startswith("metaopt."):
                _, i, name = k.split(".", 2)
                state.setdefault(int(i), {})[name] = v
        sd["state"] = state
        self.meta_opt.load_state_dict(sd)
        for g, s in zip(self.gens, self.streams):
            g.set_state(d["gen.task" if s == 0 else f"gen.task.{s}"])
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
        sharded = self.state.sharded
        extra = {}
        for f in fields(self.state):
            if f.name != "carries":
                v = d[f"{self.config.method}.{f.name}"]
                extra[f.name] = (v.tensor_split(self.comm.world)[self.comm.rank] if sharded else v).clone()
        self.state = replace(self.state, carries=self._my_part(carries, sharded), **extra)


def checkpoint_checksum(tensors: dict[str, Tensor]) -> str:
    """SHA-256 (hex) of a checkpoint's tensors: names, dtypes, shapes and bytes, in name order. Written into the
    metadata by :func:`save_checkpoint` and verified by :func:`load_checkpoint` (a flipped or missing byte in
    the data changes it).

    Example:
        >>> a = checkpoint_checksum({"w": torch.zeros(3)})
        >>> a == checkpoint_checksum({"w": torch.zeros(3)}), a == checkpoint_checksum({"w": torch.ones(3)})
        (True, False)
    """
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def previous_checkpoint(path: str | os.PathLike) -> Path:
    """Where :func:`save_checkpoint` keeps the checkpoint before the latest: ``<stem>.prev<suffix>``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_checkpoint(trainer: MetaTrainer, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> None:
    """Atomically write the trainer's state (safetensors; config, architecture and a checksum of the tensors in
    the metadata), keeping the checkpoint it replaces as :func:`previous_checkpoint`.

    Data-parallel: every process must call it (the state is gathered); rank 0 writes. A process killed at any
    point leaves a complete latest or previous checkpoint (the new file is written to a temporary name and
    renamed)."""
    tensors = trainer.state_tensors()
    if trainer.comm.is_main:
        _write_checkpoint(trainer, tensors, Path(path), extra)
    trainer.comm.barrier()  # when it returns, every process can read the new checkpoint


def _write_checkpoint(trainer: MetaTrainer, tensors: dict[str, Tensor], path: Path, extra: dict[str, Any] | None):
    meta = {
        "config": json.dumps(asdict(trainer.config)),
        "arch": trainer.lopt.arch,
        "lopt_config": json.dumps(trainer.lopt.config()),
        "task": trainer.task.name,
        "checksum": checkpoint_checksum(tensors),
        **{k: json.dumps(v) for k, v in (extra or {}).items()},
    }
    if path.exists():
        os.replace(path, previous_checkpoint(path))
    atomic_save(tensors, path, meta)


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, Tensor]]:
    """``(metadata, tensors)`` of a checkpoint, its checksum verified when it has one (``ValueError`` if it does
    not match: the file is corrupt)."""
    meta, tensors = read_safetensors(path, "checkpoint")
    if "checksum" in meta and checkpoint_checksum(tensors) != meta["checksum"]:
        raise ValueError(f"checkpoint {path} is corrupt: its tensors do not match the checksum in its metadata")
    return meta, tensors


def latest_checkpoint(path: str | os.PathLike) -> tuple[Path, dict[str, str], dict[str, Tensor]] | None:
    """The newest readable checkpoint among ``path`` and :func:`previous_checkpoint` ``(path)`` as ``(file,
    metadata, tensors)``; ``None`` if neither exists. A truncated or corrupt file is skipped with a warning;
    ``ValueError`` if every existing one is."""
    candidates = [p for p in (Path(path), previous_checkpoint(path)) if p.exists()]
    errors = []
    for p in candidates:
        try:
            meta, tensors = read_checkpoint(p)
        except ValueError as e:  # truncated or corrupt (read_safetensors), or a checksum mismatch
            errors.append(f"{p}: {e}")
            warnings.warn(f"skipping unreadable checkpoint {p} ({e})", stacklevel=2)
            continue
        return p, meta, tensors
    if errors:
        raise ValueError("no readable checkpoint: " + "; ".join(errors))
    return None


def load_checkpoint(trainer: MetaTrainer, path: str | os.PathLike) -> Path:
    """Restore a trainer from :func:`save_checkpoint` (the latest readable one of ``path`` and its previous,
    :func:`latest_checkpoint`); the config, architecture and task must match. Returns the file used.

    Data-parallel: every process reads the file (a folder all processes see) and takes its own part."""
    found = latest_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"no checkpoint at {path}")
    path, meta, tensors = found
    mine = {
        "config": asdict(trainer.config),
        "arch": trainer.lopt.arch,
        "lopt_config": trainer.lopt.config(),
        "task": trainer.task.name,
    }
    theirs = {
        # checkpoints written before weight_halflife / log_loss / meta_lr_decay / stagger / shards existed:
        # uniform weights on f, constant meta_lr, trajectories in lockstep, one random stream
        "config": {
            "weight_halflife": 0.0,
            "log_loss": False,
            "meta_lr_decay": 0,
            "stagger": 1,
            "shards": 1,
            "options": {},
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
    return path


def latest_checkpoint_exists(path: str | os.PathLike) -> bool:
    """Whether ``path`` or its :func:`previous_checkpoint` exists."""
    return Path(path).exists() or previous_checkpoint(path).exists()


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

    With ``resume=True`` and an existing ``checkpoint`` file (or the previous one, if the latest is truncated or
    corrupt), training continues from it and ends with the same weights as an uninterrupted run (same seed,
    same threads). Shows a tqdm bar (meta-loss, skipped steps, rate, ETA); data-parallel, on rank 0 only.
    """
    resumed_from = None
    if resume and checkpoint is not None and latest_checkpoint_exists(checkpoint):
        resumed_from = load_checkpoint(trainer, checkpoint)
    if trainer.comm.world > 1:  # every process must continue from the same state
        check_same(
            trainer.comm,
            {"resumed_from": [resumed_from.name, trainer.meta_step] if resumed_from else None},
            what="checkpoint the processes resumed from",
            hint="every process reads the checkpoint itself: put it in a folder all processes see",
        )
    bar = None
    if progress and trainer.comm.is_main:
        from .._progress import progress_bar

        bar = progress_bar(meta_steps, f"meta-train[{trainer.config.method}]", unit="meta-step",
                           initial=trainer.meta_step)
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
    "latest_checkpoint",
    "previous_checkpoint",
    "checkpoint_checksum",
    "tree_map",
]
