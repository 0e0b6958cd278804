r"""The process group of a ``torchrun`` launch as one small object: rank, world size and the few collectives
doubleopt needs (sums of gradients, agreement on a flag, gathers), plus rank-split generators.

:class:`Comm` with ``world == 1`` (the default, what :func:`init_from_env` returns outside ``torchrun``) never
touches ``torch.distributed``: every collective is the identity, so code written against a :class:`Comm`
runs unchanged in one process.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
from torch import Tensor

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
"""The environment variables ``torchrun`` (``torch.distributed.run``) sets in every worker."""


def launched_by_torchrun() -> bool:
    """Whether this process is a worker started by ``torchrun`` (its environment variables are set).

    Example:
        >>> import os
        >>> launched_by_torchrun() == all(k in os.environ for k in TORCHRUN_VARIABLES)
        True
    """
    return all(k in os.environ for k in TORCHRUN_VARIABLES)


@dataclass(frozen=True)
class Comm:
    """This process's place in a data-parallel group and the collectives used on it.

    Args:
        rank: this process's index, ``0 .. world - 1`` (rank 0 writes checkpoints, logs and progress bars).
        world: the number of processes.
        device: where collective buffers live (``cpu`` for gloo, this process's GPU for NCCL).
        group: the ``torch.distributed`` process group (``None``: the default group).

    Example:
        >>> import torch
        >>> comm = Comm()  # one process: every collective is the identity
        >>> comm.sum([torch.ones(2)]), comm.all(True), comm.shard(10)
        ([tensor([1., 1.])], True, range(0, 10))
    """

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    group: Any = None

    def __post_init__(self):
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise ValueError(f"rank must be in 0 .. world - 1 and world >= 1, got rank {self.rank}, world {self.world}")

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints, logs and shows progress."""
        return self.rank == 0

    # ---- splitting work ------------------------------------------------------------------------------------
    def shard(self, n: int, *, even: bool = False, what: str = "items") -> range:
        """This rank's contiguous part of ``range(n)``: the first ``n % world`` ranks get one extra item.

        With ``even=True`` ``n`` must be a multiple of ``world`` (a ``ValueError`` naming ``what`` otherwise).

        Example:
            >>> [Comm(rank=r, world=3).shard(8) for r in range(3)]
            [range(0, 3), range(3, 6), range(6, 8)]
        """
        if n < 0:
            raise ValueError(f"{what}: cannot split a negative count {n}")
        if even and n % self.world:
            raise ValueError(f"{what} ({n}) must be a multiple of the number of processes ({self.world})")
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return range(start, start + base + (self.rank < extra))

    # ---- collectives ---------------------------------------------------------------------------------------
    def sum(self, tensors: list[Tensor]) -> list[Tensor]:
        """Elementwise sums over ranks of ``tensors`` (same shapes on every rank), in one ``all_reduce``.

        The tensors travel in one flat float64 buffer (so float32 gradients are summed without extra rounding)
        and come back detached, in their own dtype, device and shape.
        """
        if self.world == 1:
            return list(tensors)
        import torch.distributed as dist

        flat = torch.cat([t.detach().reshape(-1).to(self.device, torch.float64) for t in tensors])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
        out, k = [], 0
        for t in tensors:
            out.append(flat[k : k + t.numel()].reshape(t.shape).to(t.device, t.dtype))
            k += t.numel()
        return out

    def all(self, flag: bool) -> bool:
        """True on every rank iff ``flag`` is True on every rank (one ``all_reduce`` of a 0/1 flag, MIN)."""
        if self.world == 1:
            return bool(flag)
        import torch.distributed as dist

        t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.group)
        return bool(t.item())

    def gather(self, tensor: Tensor) -> list[Tensor]:
        """``tensor`` of every rank (same shape and dtype on all), in rank order, on every rank (``all_gather``)."""
        if self.world == 1:
            return [tensor]
        import torch.distributed as dist

        src = tensor.detach().contiguous().to(self.device)
        parts = [torch.empty_like(src) for _ in range(self.world)]
        dist.all_gather(parts, src, group=self.group)
        return [p.to(tensor.device) for p in parts]

    def gather_rows(self, tensor: Tensor) -> Tensor:
        """Concatenate every rank's ``tensor`` along dim 0, in rank order; the row counts may differ by rank
        (the other dimensions and the dtype may not)."""
        if self.world == 1:
            return tensor
        return torch.cat(self._gather_parts(tensor))

    def gather_text(self, text: str) -> list[str]:
        """``text`` of every rank, in rank order (UTF-8 bytes in a padded uint8 tensor)."""
        if self.world == 1:
            return [text]
        data = torch.tensor(list(text.encode("utf-8")), dtype=torch.uint8)
        return [bytes(part.tolist()).decode("utf-8") for part in self._gather_parts(data)]

    def _gather_parts(self, tensor: Tensor) -> list[Tensor]:
        """Every rank's ``tensor`` (row counts may differ): counts first, then rows padded to the largest."""
        counts = [int(c) for c in self.gather(torch.tensor([tensor.shape[0]], dtype=torch.int64))]
        padded = tensor.new_zeros((max(counts), *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        return [p[:c] for p, c in zip(self.gather(padded), counts)]

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier(group=self.group)


def init_from_env(backend: str | None = None, timeout_s: float = 600.0) -> Comm:
    """The :class:`Comm` of this process: under ``torchrun`` with more than one process, joins the process
    group (``gloo`` on CPU, ``nccl`` when CUDA is available, or ``backend``); otherwise ``Comm()`` (one process).

    Calling it again, or after the caller initialized ``torch.distributed`` itself, returns the existing group.
    With NCCL each process uses GPU ``LOCAL_RANK``.

    Example:
        >>> init_from_env() if not launched_by_torchrun() else Comm()
        Comm(rank=0, world=1, device=device(type='cpu'), group=None)
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return _comm_of_group(dist.get_backend())
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return Comm()
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this PyTorch build")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    timeout = timedelta(seconds=timeout_s)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group(backend, store=_attempt_store(rank, world, timeout), rank=rank, world_size=world,
                            timeout=timeout)  # fmt: skip
    return _comm_of_group(backend)


def _attempt_store(rank: int, world: int, timeout: timedelta):
    """The rendezvous store of this launch attempt: torchrun's store (``MASTER_ADDR:MASTER_PORT``, kept by the agent
    across restarts) under a prefix naming ``TORCHELASTIC_RESTART_COUNT``, so a restarted group never reads the
    addresses its dead predecessors published (gloo would connect to a closed port)."""
    import torch.distributed as dist

    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    store = dist.TCPStore(
        host, port, world_size=None if agent else world, is_master=not agent and rank == 0, timeout=timeout
    )
    return dist.PrefixStore(f"doubleopt/attempt{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/", store)


def _comm_of_group(backend: str) -> Comm:
    import torch.distributed as dist

    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    return Comm(rank=dist.get_rank(), world=dist.get_world_size(), device=device)


def shutdown(comm: Comm) -> None:
    """Synchronize the processes at the end of a run (nothing for one process).

    The process group itself is released when the processes exit, not destroyed here: two gloo processes
    destroying their groups at the same moment abort one of them ("terminate called without an active
    exception") in about 3 of 10 launches on this machine, even after a barrier; with the barrier alone, none
    in 20. A later :func:`init_from_env` in the same process reuses the group."""
    if comm.world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()  # every process reaches the end before any exits


def exit_worker(comm: Comm, code: int = 0) -> None:
    """End a ``torchrun`` worker: :func:`shutdown`, flush the output, and leave with ``os._exit(code)``.

    ``os._exit`` skips the C++ destructors at interpreter exit. Tearing down gloo there races between the
    processes and aborts one of them now and then ("terminate called without an active exception", a non-zero
    exit that ``torchrun`` reports as a failed run), even after a barrier and with nothing left to communicate.
    With one process it only returns (the caller exits as usual)."""
    shutdown(comm)
    if comm.world > 1:
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def stream_seed(seed: int, stream: int) -> int:
    """The seed of random stream ``stream`` of a run seeded with ``seed``: ``seed`` itself for stream 0 (so a
    one-stream run draws exactly what the single-process code draws), else 63 bits of SHA-256 of both.

    Example:
        >>> stream_seed(7, 0), stream_seed(7, 1) == stream_seed(7, 1), stream_seed(7, 1) != stream_seed(7, 2)
        (7, True, True)
    """
    if stream < 0:
        raise ValueError(f"stream must be >= 0, got {stream}")
    if stream == 0:
        return int(seed)
    digest = hashlib.sha256(f"doubleopt-stream:{int(seed)}:{int(stream)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def stream_generator(seed: int, stream: int) -> torch.Generator:
    """A ``torch.Generator`` seeded with :func:`stream_seed` ``(seed, stream)``.

    A global batch drawn as ``S`` streams (stream ``s`` draws its own ``B / S`` instances from
    ``stream_generator(seed, s)``) is the same whichever process draws each stream, so ``N`` processes holding
    ``S / N`` streams each draw together exactly what one process holding all ``S`` draws.

    Example:
        >>> a = torch.randn(2, generator=stream_generator(0, 1))
        >>> bool((a == torch.randn(2, generator=stream_generator(0, 1))).all())
        True
    """
    return torch.Generator().manual_seed(stream_seed(seed, stream))
