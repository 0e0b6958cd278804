r"""Losses, the training loop :func:`fit`, checkpoints and break-even accounting for amortized models.

Losses (Amos 2023, section 3.2), averaged over a batch of contexts :math:`x_i`:

* ``"regression"``: :math:`\frac1B\sum_i \|\hat y_\theta(x_i) - y^\star(x_i)\|^2`, with targets from a
  callable (e.g. the true sparse codes of a LASSO context) or computed once by a classical ``reference``
  solver on a fixed training set and cached;
* ``"objective"``: :math:`\frac1B\sum_i f(\hat y_\theta(x_i); x_i)` (no solutions needed; Meta OT, VAEs);
* ``"layerwise"``: :math:`\frac1K\sum_{k=1}^{K} \log \frac1B\sum_i \|y_k(x_i) - y^\star(x_i)\|^2` over the
  outputs :math:`y_k` of every layer of an unrolled model (one whose ``forward`` takes ``return_all=True``,
  e.g. :class:`~doubleopt.amortized.LISTA`), targets as for ``"regression"``: each decibel of error gained at
  any depth counts the same, so every prefix of the network is a good solver (deep supervision);
* ``"unrolled"``: :math:`\frac1B\sum_i \frac{1}{k+1}\sum_{t=0}^{k} f(y_t(x_i); x_i)` over the prediction and
  the ``k`` refinement iterates of a :class:`~doubleopt.amortized.SemiAmortized` solver, differentiated
  through the steps (unrolled).

Break-even: training costs :math:`T` seconds once; each instance then saves
:math:`\Delta = t_\text{classical} - t_\text{amortized}` seconds, so amortization pays off after
:math:`N^\star = T / \Delta` instances (:func:`break_even`).
"""

from __future__ import annotations

import inspect
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._problem import ProblemFamily
from .._progress import TimeBudgetBar, progress_bar
from ..distributed import Comm, check_same, init_from_env, run_identity, sharded_solve, stream_generator, tensor_digest
from ..solvers._base import Solver
from ._safeguard import index_context
from ._solvers import SemiAmortized

LOSSES = ("regression", "objective", "unrolled", "layerwise")


def regression_loss(solver: SemiAmortized, problem, x, target: Tensor) -> Tensor:
    """Mean squared distance of the final iterate to the targets ``y*(x)``."""
    y = solver.iterates(problem, x)[-1]
    return ((y - target) ** 2).sum(-1).mean()


def layerwise_loss(solver: SemiAmortized, problem, x, target: Tensor) -> Tensor:
    """Mean over the model's layers of the log mean squared distance of that layer's output to the targets."""
    outs = solver.model(x, return_all=True)
    return torch.stack([((y - target) ** 2).sum(-1).mean().log() for y in outs]).mean()


def objective_loss(solver: SemiAmortized, problem, x) -> Tensor:
    """Mean objective :math:`f(y; x)` at the final iterate (prediction, or after ``k`` refinement steps)."""
    y = solver.iterates(problem, x)[-1]
    return problem.objective(y, x).mean()


def unrolled_loss(solver: SemiAmortized, problem, x, weights: Tensor | None = None) -> Tensor:
    """Mean objective summed over the prediction and every refinement iterate (weights default uniform)."""
    ys = solver.iterates(problem, x)
    vals = torch.stack([problem.objective(y, x).mean() for y in ys])
    w = torch.full_like(vals, 1.0 / len(ys)) if weights is None else weights.to(vals)
    return (w * vals).sum()


@dataclass
class FitResult:
    """What :func:`fit` returns: the loss history and the training time (for break-even accounting)."""

    history: list[dict[str, float]] = field(default_factory=list)
    train_time: float = 0.0
    steps: int = 0
    final_val: float = float("nan")
    checkpoint: str | None = None


def save_checkpoint(model: nn.Module, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write ``model.state_dict()`` as safetensors, atomically (temp file + ``os.replace``)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def load_checkpoint(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load safetensors weights written by :func:`save_checkpoint` into ``model`` (strict).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a readable safetensors file (corrupt, truncated) or does not match the model
            (missing, unexpected or differently shaped tensors); the model is then left unchanged.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except SafetensorError as e:
        raise ValueError(f"cannot read the checkpoint {path}: not a valid safetensors file (corrupt or "
                         f"truncated?): {e}") from None
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    wrong = [k for k in expected if k in tensors and tuple(tensors[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        raise ValueError(
            f"the checkpoint {path} does not match {type(model).__name__}: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, shape differs for {[(k, tuple(tensors[k].shape)) for k in wrong[:5]]}"
        )
    model.load_state_dict(tensors)
    return model


def break_even(train_time: float, classical_time: float, amortized_time: float) -> float:
    """Number of instances after which training pays off: ``train_time / (classical - amortized)`` per
    instance (``inf`` if amortization saves nothing).

    >>> break_even(60.0, 0.01, 0.001)
    6666.66...
    """
    saved = classical_time - amortized_time
    return train_time / saved if saved > 0 else math.inf


def _make_loss(loss: str, solver, problem, targets_of: Callable | None):
    if loss == "objective":
        return lambda x, t: objective_loss(solver, problem, x)
    if loss == "unrolled":
        return lambda x, t: unrolled_loss(solver, problem, x)
    if loss == "layerwise":
        return lambda x, t: layerwise_loss(solver, problem, x, t)
    return lambda x, t: regression_loss(solver, problem, x, t)


def _check_fit_numbers(*, lr, weight_decay, grad_clip, time_limit, train_size, val_size, val_every,
                       reference_steps) -> None:
    """:func:`fit`'s numeric arguments, each refused by name (NaN included)."""
    from ..solvers._base import check_setting

    check_setting("lr", lr, low=0, low_open=True)
    check_setting("weight_decay", weight_decay, low=0)
    if grad_clip is not None:
        check_setting("grad_clip", grad_clip, low=0, low_open=True)
    if time_limit is not None:
        check_setting("time_limit", time_limit, low=0, low_open=True)
    if train_size is not None:
        check_setting("train_size", train_size, low=1, integer=True)
    check_setting("val_size", val_size, low=1, integer=True)
    check_setting("val_every", val_every, low=1, integer=True)
    check_setting("reference_steps", reference_steps, low=1, integer=True)


def fit(
    solver: SemiAmortized,
    family: ProblemFamily,
    *,
    loss: str = "objective",
    steps: int = 1000,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    grad_clip: float | None = 10.0,
    targets: Callable[[Any], Tensor] | None = None,
    reference: Solver | None = None,
    reference_steps: int = 2000,
    train_size: int | None = None,
    val_size: int = 256,
    val_every: int = 100,
    checkpoint: str | os.PathLike | None = None,
    time_limit: float | None = None,
    seed: int = 0,
    progress: bool = True,
    comm: Comm | None = None,
    shards: int | None = None,
) -> FitResult:
    """Train an amortized solver's model over a problem family with Adam and a cosine learning-rate schedule.

    Args:
        solver: :class:`FullyAmortized` or :class:`SemiAmortized`; its ``model`` is trained.
        family: a :class:`~doubleopt.ProblemFamily`; training contexts are fresh samples each step
            (``train_size=None``) or minibatches of a fixed set of ``train_size`` contexts.
        loss: ``"objective"``, ``"unrolled"``, ``"regression"`` or ``"layerwise"`` (see the module docstring).
        targets: for ``"regression"`` / ``"layerwise"``: a callable ``x -> y*`` (e.g. known ground truth);
        reference: or a classical solver whose solutions on the fixed training set are computed once and
            cached (needs ``train_size``); instances it does not solve are dropped.
        val_size: number of held-out contexts (seed ``seed + 1``).
        val_every: evaluate the held-out contexts every this many steps.
        checkpoint: path of a safetensors file written (atomically) at each validation and at the end.
        time_limit: stop after this many seconds of training.
        seed: seeds the context stream (``torch.Generator``) and minibatch order.
        comm: data-parallel processes; default :func:`doubleopt.distributed.init_from_env` (the ``torchrun``
            group when launched by ``torchrun``, else one process). Each process computes the loss of its part of
            every batch; the gradients are summed with one ``all_reduce`` and every process applies the same
            update, so ``N`` processes end with the weights of one process with the same ``shards``. Fresh
            contexts: each process draws its share of the ``shards`` streams; a fixed training set and the
            reference solves are split by instance (:func:`~doubleopt.distributed.sharded_solve`). Rank 0 writes
            the checkpoint and shows the progress bar. ``loss="layerwise"`` (a log of a batch mean) is refused
            with several processes.
        shards: fresh contexts are drawn as this many random streams of ``batch_size / shards`` contexts
            (:func:`~doubleopt.distributed.stream_generator`; stream 0 is the single-process stream); default one
            per process of ``comm``.

    Returns:
        :class:`FitResult` (history of ``step, train_loss, val_loss``; ``train_time`` in seconds, including
        the reference solves).

    Example:
        >>> import torch, doubleopt as do
        >>> fam = do.problems.Quadratic(dim=2, condition_number=2.0)
        >>> class Linear(torch.nn.Module):  # y = W b
        ...     def __init__(self):
        ...         super().__init__(); self.lin = torch.nn.Linear(2, 2)
        ...     def forward(self, x):
        ...         return self.lin(x.b)
        >>> res = do.amortized.fit(do.amortized.FullyAmortized(Linear()), fam, steps=50, progress=False)
        >>> res.history[-1]["val_loss"] < res.history[0]["val_loss"]
        True
    """
    if not isinstance(solver, SemiAmortized):
        raise TypeError(f"fit trains FullyAmortized / SemiAmortized solvers, got {type(solver).__name__}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if loss in ("regression", "layerwise") and targets is None and reference is None:
        raise ValueError(f"loss={loss!r} needs targets (a callable x -> y*) or a reference solver")
    if loss == "layerwise":
        if solver.steps > 0:
            raise ValueError("loss='layerwise' trains the layers of a FullyAmortized unrolled model (steps=0)")
        if "return_all" not in inspect.signature(solver.model.forward).parameters:
            raise ValueError(
                f"loss='layerwise' needs a model whose forward takes return_all=True (every layer's output); "
                f"{type(solver.model).__name__}.forward does not"
            )
    if reference is not None and targets is None and train_size is None:
        raise ValueError("a reference solver caches solutions of a fixed training set: pass train_size")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps}, {batch_size}")
    _check_fit_numbers(lr=lr, weight_decay=weight_decay, grad_clip=grad_clip, time_limit=time_limit,
                       train_size=train_size, val_size=val_size, val_every=val_every, reference_steps=reference_steps)
    model = solver.model
    comm = init_from_env() if comm is None else comm
    shards = comm.world if shards is None else shards
    if shards < 1 or batch_size % shards:
        raise ValueError(f"shards must be >= 1 and divide batch_size ({batch_size}), got {shards}")
    if comm.world > 1:
        check_same(comm, run_identity(
            loss=loss, steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay, grad_clip=grad_clip,
            train_size=train_size, val_size=val_size, val_every=val_every, seed=seed, shards=shards,
            family=repr(family), reference=repr(reference), model=type(model).__name__,
            initial_weights=tensor_digest(list(model.state_dict().values())),
        ), what="fit configuration")  # fmt: skip
        if loss == "layerwise":
            raise ValueError("loss='layerwise' (a log of a batch mean) does not split over processes; use one process")
        if batch_size < comm.world:
            raise ValueError(f"batch_size ({batch_size}) must be at least the number of processes ({comm.world})")
    streams = comm.shard(shards, even=True, what="shards")
    gens = [stream_generator(seed, s) for s in streams]
    gen = torch.Generator().manual_seed(seed)  # the fixed training set and its minibatch order (every process)
    start = time.perf_counter()

    def with_targets(x):
        if loss not in ("regression", "layerwise"):
            return x, None
        if targets is not None:
            return x, targets(x)
        sol = sharded_solve(family, reference, x, comm=comm, max_steps=reference_steps, throw=False)
        ok = sol.successful.nonzero().flatten()
        return index_context(x, ok, sol.y.shape[0]), sol.y[ok].detach()

    train_x = train_t = None
    if train_size is not None:
        train_x, train_t = with_targets(family.sample(train_size, generator=gen))
        n_train = int(next(t for t in _leaves(train_x) if t.dim() > 0).shape[0])
        if n_train == 0:
            raise RuntimeError("the reference solver solved none of the training contexts")
    val_x, val_t = with_targets(family.sample(val_size, generator=torch.Generator().manual_seed(seed + 1)))
    loss_fn = _make_loss(loss, solver, family, targets)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    result = FitResult(checkpoint=str(checkpoint) if checkpoint is not None else None)

    def validate() -> float:
        with torch.no_grad():
            return float(loss_fn(val_x, val_t))

    def batch_loss(step_gen: torch.Generator | None) -> Tensor:
        """This process's part of the mean loss over the step's batch (the parts sum to the batch mean)."""
        if train_x is not None:
            idx = torch.randint(n_train, (min(batch_size, n_train),), generator=step_gen)
            mine = comm.shard(len(idx))
            part = idx[mine.start : mine.stop]
            xb = index_context(train_x, part, n_train)
            tb = train_t[part] if train_t is not None else None
            return loss_fn(xb, tb) * (len(part) / len(idx))
        value = 0.0
        for g in gens:  # equal stream sizes: the mean of the stream means is the batch mean
            xb, tb = with_targets(family.sample(batch_size // shards, generator=g))
            value = value + loss_fn(xb, tb) / shards
        return value

    progress = progress and comm.is_main
    bar = time_bar = None
    if progress and time_limit is not None:  # the budget, not a step count it will not reach, is the total
        time_bar = TimeBudgetBar(time_limit, f"fit[{loss}]")
    elif progress:
        bar = progress_bar(steps, f"fit[{loss}]")
    model.train()
    train_loss = float("nan")
    step = 0
    try:
        for step in range(1, steps + 1):
            opt.zero_grad(set_to_none=True)
            value = batch_loss(gen)
            if not comm.all(bool(torch.isfinite(value))):  # every process stops together
                raise FloatingPointError(
                    f"fit: the {loss} loss became non-finite at step {step}; lower lr or enable grad_clip"
                )
            value.backward()
            if comm.world > 1:  # the sum of the parts' gradients (DDP does not unroll through solves)
                params = [p for p in model.parameters() if p.requires_grad]
                parts = comm.sum([torch.zeros_like(p) if p.grad is None else p.grad for p in params] + [value.detach()])
                for p, g in zip(params, parts):
                    p.grad = g
                value = parts[-1]
            if grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            sched.step()
            train_loss = float(value.detach())
            timed_out = time_limit is not None and time.perf_counter() - start > time_limit
            timed_out = not comm.all(not timed_out) if comm.world > 1 else timed_out  # stop together
            if step % val_every == 0 or step == steps or step == 1 or timed_out:
                result.history.append(
                    {
                        "step": step,
                        "train_loss": train_loss,
                        "val_loss": validate(),
                        "time": time.perf_counter() - start,
                    }
                )
                if checkpoint is not None and comm.is_main:
                    save_checkpoint(model, checkpoint, {"step": str(step), "loss": loss})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{train_loss:.4g}", refresh=False)
            if time_bar is not None:
                time_bar.advance(time.perf_counter() - start, step=str(step), loss=f"{train_loss:.4g}")
            if timed_out:
                break
    finally:
        for b in (bar, time_bar):
            if b is not None:
                b.close()
    model.eval()
    result.steps = step
    result.train_time = time.perf_counter() - start
    result.final_val = result.history[-1]["val_loss"] if result.history else float("nan")
    return result


def _leaves(x):
    from .._tree import tree_tensors

    return tree_tensors(x)
