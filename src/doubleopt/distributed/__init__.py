"""Beyond one process: data-parallel meta-training and sharded batched solves on ``torch.distributed``, launched
with ``torchrun``.

* :class:`Comm` (from :func:`init_from_env`): rank, world size and the collectives doubleopt uses; with one
  process every collective is the identity, so the same code runs with and without ``torchrun``.
* :func:`stream_generator`: rank-split random streams. A global batch drawn as ``S`` streams is the same whichever
  process draws each stream, so ``N`` processes reproduce one process's global batch.
* :func:`check_same`: start-up check that every rank has the same configuration, shapes and code.
* :func:`sharded_solve`: split a batch of instances across ranks, solve each part with
  :func:`doubleopt.solve`, gather solutions and result codes on every rank.

Meta-training (``doubleopt train-lopt``, :class:`doubleopt.learned.MetaTrainer` with ``comm=``) uses these to
average meta-gradients by hand (``all_reduce``; DDP does not support the double backward of TBPTT) and to split
ES / PES perturbations across ranks. See ``docs/distributed.md``.
"""

from ._check import check_same, code_digest, run_identity, tensor_digest
from ._comm import (
    TORCHRUN_VARIABLES,
    Comm,
    exit_worker,
    init_from_env,
    launched_by_torchrun,
    shutdown,
    stream_generator,
    stream_seed,
)
from ._sharded_solve import shard_context, sharded_solve

__all__ = [
    "Comm",
    "init_from_env",
    "launched_by_torchrun",
    "shutdown",
    "exit_worker",
    "TORCHRUN_VARIABLES",
    "stream_generator",
    "stream_seed",
    "check_same",
    "run_identity",
    "code_digest",
    "tensor_digest",
    "sharded_solve",
    "shard_context",
]
