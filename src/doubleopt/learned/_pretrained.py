"""Pretrained learned optimizers shipped inside the package (``weights/*.safetensors``).

Each file was produced by ``doubleopt train-lopt``; the exact command, seed, wall time and meta-training
configuration are recorded in its safetensors metadata and in ``weights/RECORD.md`` / ``weights/<name>.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

from ._base import LearnedOptimizer
from ._lstm import LSTMOptimizer
from ._mlp import MLPOptimizer
from .policy import PolicyOptimizer

WEIGHTS_DIR = Path(__file__).parent / "weights"
_ARCHS: dict[str, type[LearnedOptimizer]] = {"lstm": LSTMOptimizer, "mlp": MLPOptimizer, "policy": PolicyOptimizer}
PRETRAINED = {"lstm-digits": "lstm-digits.safetensors", "mlp-digits": "mlp-digits.safetensors"}
"""The names :func:`load_pretrained` accepts, each mapped to its weights file in the package's ``weights/``."""
# Li & Malik (2017): per family, the LSTM / MLP optimizers and the policy trained by meta-gradients, the policy
# trained by guided policy search and by PPO, all on the family's 90 training objectives (li_malik_task, seed 0)
LI_MALIK_METHODS = ("lstm-tbptt", "mlp-tbptt", "policy-tbptt", "policy-gps", "policy-ppo")
PRETRAINED.update(
    {f"{m}-{f}": f"{m}-{f}.safetensors" for m in LI_MALIK_METHODS for f in ("logistic", "robust", "mlp")}
)


def load_pretrained(name: str, into: LearnedOptimizer | None = None) -> LearnedOptimizer:
    """A meta-trained optimizer: ``"lstm-digits"`` or ``"mlp-digits"`` (meta-trained on the digits MLP task), or
    ``"<method>-<family>"`` for the Li & Malik families (``"logistic"``, ``"robust"``, ``"mlp"``), e.g.
    ``"policy-gps-logistic"`` (the policy trained by guided policy search); see :data:`PRETRAINED`.

    Args:
        name: the shipped weights' name, or a path to a ``.safetensors`` file written by ``train-lopt``.
        into: load into this module instead of building one from the file's recorded architecture; a file of
            another architecture raises ``ValueError`` naming the mismatched tensor.

    Example:
        >>> import doubleopt as do
        >>> lopt = do.learned.load_pretrained("lstm-digits")
        >>> type(lopt).__name__, lopt.hidden
        ('LSTMOptimizer', 20)
    """
    if name in PRETRAINED:
        path = WEIGHTS_DIR / PRETRAINED[name]
    elif Path(name).suffix == ".safetensors" and Path(name).exists():
        path = Path(name)
    else:
        raise ValueError(
            f"unknown pretrained optimizer {name!r}; available: {sorted(PRETRAINED)} (or a path to a .safetensors file)"
        )
    if into is None:
        from ._base import read_safetensors

        meta, _ = read_safetensors(path, "weights", tensors=False)
        arch = meta.get("arch")
        if arch not in _ARCHS:
            raise ValueError(f"{path} does not record a known architecture (arch={arch!r}); pass into=")
        into = _ARCHS[arch](**json.loads(meta.get("config", "{}")))
    into.load_weights(path)
    into.eval()
    return into
