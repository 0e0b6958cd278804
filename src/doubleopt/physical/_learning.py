r"""Learning rules for resistor networks (the *outer* optimization over conductances ``k``).

The cost is :math:`C(k) = \frac1B \sum_b \tfrac12 \|M V^F_b(k) - T_b\|^2`. Every rule returns an estimate
:math:`g \approx \nabla_k C` (up to a positive factor) from local quantities (edge drops), and a step is
:math:`k \leftarrow \operatorname{clip}(k - \alpha\, g, k_{min}, k_{max})`:

* :class:`CoupledLearning` (Stern et al. 2021): clamped outputs :math:`O^C = O^F + \eta (T - O^F)`,
  :math:`g = \frac{1}{\eta} \overline{(\Delta V^C)^2 - (\Delta V^F)^2}` (so
  :math:`\Delta k = -\frac{\alpha}{\eta}[(\Delta V^C)^2 - (\Delta V^F)^2]`). As :math:`\eta \to 0`,
  :math:`g \to 2 \overline{J^\top S^{-1} r}` with :math:`J = \partial O / \partial k`, :math:`r = O^F - T`,
  :math:`S = M L_{ff}^{-1} M^\top`: the gradient of the cost in the metric :math:`S^{-1}`. It is parallel to
  :math:`\nabla C` for a single output, and in general is exactly the gradient of the energy gap
  :math:`(P^C - P^F) \cdot 2/\eta^2` (Stern et al. 2021, Sec. III).
* :class:`EquilibriumPropagation` (Scellier & Bengio 2017): nudged state minimizing :math:`P + \beta C`,
  :math:`g = \frac{1}{\beta}\,\overline{\partial_k P(V^\beta) - \partial_k P(V^F)}
  = \frac{1}{2\beta}\overline{(\Delta V^\beta)^2 - (\Delta V^F)^2}`; ``symmetric=True`` uses
  :math:`\pm\beta` (error :math:`O(\beta^2)`, Laborieux et al. 2021).
  :math:`g \to \nabla C` as :math:`\beta\to0`.
* :class:`ExactGradient`: the adjoint method,
  :math:`\nabla_{k_e} C = -\overline{\Delta V_e\, \Delta\lambda_e}`,
  :math:`\lambda = L_{ff}^{-1} M^\top r` (the in-silico optimum).

Overlines are means over the ``B`` samples. All three share one sparse factorization per step.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ._factor import peak_rss, peak_rss_reset
from ._network import ArrayLike, FreeState, LaplacianFactor, ResistorNetwork, mean_product


@dataclass(frozen=True)
class CoupledLearning:
    """Coupled learning with clamping strength ``eta`` in (0, 1]."""

    eta: float = 0.1

    def __post_init__(self):
        if not (0 < self.eta <= 1):
            raise ValueError(f"CoupledLearning needs 0 < eta <= 1, got {self.eta}")

    def estimate(self, factor: LaplacianFactor, st: FreeState) -> np.ndarray:
        # mean_b (dV^C)^2 - (dV^F)^2 = mean_b 2 dV^F d + d^2, with d = W dZ^T the clamping response
        W, A, dZ = factor.clamp_weights(st, self.eta), st.drop_basis, factor.dZ
        return (2 * mean_product(st.coef, A, W, dZ) + mean_product(W, dZ, W, dZ)) / self.eta


@dataclass(frozen=True)
class EquilibriumPropagation:
    """Equilibrium propagation with nudging ``beta > 0`` (``symmetric``: nudge at +beta and -beta)."""

    beta: float = 0.1
    symmetric: bool = False

    def __post_init__(self):
        if not (0 < self.beta < float("inf")):
            raise ValueError(f"EquilibriumPropagation needs beta > 0 and finite, got {self.beta}")

    def estimate(self, factor: LaplacianFactor, st: FreeState) -> np.ndarray:
        Wp, A, dZ = factor.nudge_weights(st, self.beta), st.drop_basis, factor.dZ
        if not self.symmetric:  # (dV + d)^2 - dV^2 = 2 dV d + d^2
            return (2 * mean_product(st.coef, A, Wp, dZ) + mean_product(Wp, dZ, Wp, dZ)) / (2 * self.beta)
        Wm = factor.nudge_weights(st, -self.beta)
        Wd = Wp - Wm  # (dV + dp)^2 - (dV + dm)^2 = 2 dV (dp - dm) + dp^2 - dm^2
        sq = mean_product(Wp, dZ, Wp, dZ) - mean_product(Wm, dZ, Wm, dZ)
        return (2 * mean_product(st.coef, A, Wd, dZ) + sq) / (4 * self.beta)


@dataclass(frozen=True)
class ExactGradient:
    """The exact gradient of the cost by the sparse adjoint method."""

    def estimate(self, factor: LaplacianFactor, st: FreeState) -> np.ndarray:
        return -mean_product(st.coef, st.drop_basis, st.residual, factor.dZ)


Rule = CoupledLearning | EquilibriumPropagation | ExactGradient


def exact_gradient(
    net: ResistorNetwork, inputs: ArrayLike, targets: ArrayLike, k: ArrayLike | None = None, *,
    backend: str | None = None,
) -> tuple[float, Tensor]:
    r"""Cost :math:`C(k)` and its exact gradient :math:`\nabla_k C` ``(E,)`` (float64), sparse adjoint method.

    Example:
        >>> import torch, doubleopt as do
        >>> net = do.physical.random_network(50, n_inputs=2, n_outputs=2, seed=0)
        >>> x = torch.rand(8, 2, dtype=torch.float64); t = 0.3 * torch.ones(8, 2, dtype=torch.float64)
        >>> C, g = do.physical.exact_gradient(net, x, t)
        >>> g.shape == (net.n_edges,)
        True
    """
    f = net.factorize(k, backend=backend)
    st = f.free(inputs, targets)
    return st.cost, torch.from_numpy(ExactGradient().estimate(f, st))


def coupled_learning_limit(
    net: ResistorNetwork, inputs: ArrayLike, targets: ArrayLike, k: ArrayLike | None = None, *,
    backend: str | None = None,
) -> Tensor:
    r"""The :math:`\eta \to 0` limit of coupled learning, :math:`2\overline{J^\top S^{-1} r}`, ``(E,)``.

    Equal to ``2 * exact_gradient`` divided by :math:`S` for one output; for several outputs it is the
    gradient of the cost measured in the metric :math:`S^{-1}` (S = output-to-output resistance matrix).
    """
    f = net.factorize(k, backend=backend)
    st = f.free(inputs, targets)
    w = f._solve_S(st.residual.T).T
    return torch.from_numpy(-2.0 * mean_product(st.coef, st.drop_basis, w, f.dZ))


def gradient_estimate(
    net: ResistorNetwork, inputs: ArrayLike, targets: ArrayLike, rule: Rule, k: ArrayLike | None = None, *,
    backend: str | None = None,
) -> Tensor:
    """The update direction ``g`` ``(E,)`` of ``rule`` (a step is ``k - lr * g``)."""
    f = net.factorize(k, backend=backend)
    return torch.from_numpy(rule.estimate(f, f.free(inputs, targets)))


@dataclass
class StepStats:
    """How a learning step solved its states.

    Attributes:
        backend: the factorization whose solves were used (``"splu-reference"`` when a refactorization failed
            its residual check and the step's solves were redone with a fresh SuperLU factorization).
        factor_nnz: nonzeros of the factor (from the network's symbolic analysis, done once).
        factor_bytes: memory of the factorization, from the symbolic analysis.
        peak_rss_bytes: peak resident memory of the process during the step (Linux ``VmHWM``, reset at the
            step's start; ``None`` where the platform cannot measure it).
        fallbacks: residual-check fallbacks of the network's solver so far (all steps).
    """

    backend: str
    factor_nnz: int
    factor_bytes: int
    peak_rss_bytes: int | None
    fallbacks: int


@dataclass
class StepResult:
    """One learning step: the new conductances, the cost *before* the step and the direction used.

    ``k`` and ``direction`` are always float64 NumPy arrays ``(E,)`` (new arrays, whatever kind of array-like
    the step was given), like :attr:`TrainResult.k` and :attr:`ResistorNetwork.k`. ``stats``: the backend used
    and the memory (:class:`StepStats`).
    """

    k: np.ndarray
    cost: float
    direction: np.ndarray
    stats: StepStats | None = None


def _check_rule(rule) -> None:
    if not callable(getattr(rule, "estimate", None)):
        raise ValueError(
            "rule must be a learning rule (CoupledLearning, EquilibriumPropagation, ExactGradient or an object "
            f"with estimate(factor, free_state)), got {rule!r}"
        )


def _check_lr(lr: float) -> float:
    try:
        v = float(lr) if not isinstance(lr, str | bytes) else None
    except (TypeError, ValueError):
        v = None
    if v is None:
        raise ValueError(f"lr must be a number >= 0, got {lr!r}")
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"lr must be finite and >= 0 (a step is k - lr * g, a descent step), got {lr!r}")
    return v


def _check_count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def learning_step(
    net: ResistorNetwork,
    inputs: ArrayLike,
    targets: ArrayLike,
    rule: Rule,
    lr: float,
    *legacy,
    k: ArrayLike | None = None,
    superpose: bool | None = None,
    backend: str | None = None,
    memory_limit: float | None = None,
) -> StepResult:
    r"""One step of ``rule``: factorize once, free state, clamped/nudged/adjoint state, clipped update
    :math:`k \leftarrow \operatorname{clip}(k - \text{lr}\, g, k_{min}, k_{max})`.

    Args:
        net: the network (not modified).
        inputs: ``(B, n_inputs)`` with ``B >= 1``; any array-like.
        targets: ``(B, n_outputs)``; any array-like.
        rule: :class:`CoupledLearning`, :class:`EquilibriumPropagation` or :class:`ExactGradient`.
        lr: step size, finite and ``>= 0``.
        k: conductances to step from, any array-like ``(E,)`` inside ``[k_min, k_max]`` (default ``net.k``;
            not modified).
        superpose: passed to :meth:`LaplacianFactor.free` (default: superpose when it saves solves).
        backend: ``"auto"``, ``"pardiso"``, ``"qdldl"`` or ``"splu"`` (default: the network's,
            :class:`ResistorNetwork`). The symbolic analysis of the reduced Laplacian is cached on the network
            (its pattern never changes while learning), so a step only refactorizes numerically.
        memory_limit: bytes the factorization may use (default: the network's, else the available memory);
            a network that will not fit raises :class:`NetworkTooLargeError` before any numeric work.

    Returns:
        :class:`StepResult` whose ``k`` and ``direction`` are float64 NumPy arrays, whatever ``k`` was, and
        whose ``stats`` give the backend used, the factor's memory and the step's peak memory.

    The earlier positional order ``learning_step(net, k, inputs, targets, rule, lr[, superpose])`` is still
    accepted (with a ``DeprecationWarning``).

    Example:
        >>> import torch, doubleopt as do
        >>> net = do.physical.random_network(40, n_inputs=2, n_outputs=1, seed=0)
        >>> x = torch.rand(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        >>> out = do.physical.learning_step(net, x, 0.5 * x[:, :1], do.physical.ExactGradient(), lr=5.0)
        >>> type(out.k).__name__, out.k.shape == (net.n_edges,), net.cost(x, 0.5 * x[:, :1], out.k) < out.cost
        ('ndarray', True, True)
    """
    if callable(getattr(lr, "estimate", None)) and not callable(getattr(rule, "estimate", None)):
        # the earlier order (net, k, inputs, targets, rule, lr[, superpose]), positional
        if k is not None or not 1 <= len(legacy) <= 2 or (len(legacy) == 2 and superpose is not None):
            raise TypeError("learning_step(net, k, inputs, targets, rule, lr[, superpose]) (the earlier order) "
                            "takes k, lr and superpose positionally; use learning_step(net, inputs, targets, "
                            "rule, lr, k=..., superpose=...)")
        warnings.warn("learning_step(net, k, inputs, targets, rule, lr) is deprecated: use "
                      "learning_step(net, inputs, targets, rule, lr, k=k)", DeprecationWarning, stacklevel=2)
        k, inputs, targets, rule, lr = inputs, targets, rule, lr, legacy[0]
        superpose = legacy[1] if len(legacy) == 2 else superpose
    elif legacy:
        raise TypeError(f"learning_step takes 5 positional arguments after net at most, got {5 + len(legacy)}; "
                        "pass k= and superpose= by keyword")
    _check_rule(rule)
    lr = _check_lr(lr)
    kk = net.check_k_in_range(net.k if k is None else k)
    measured = peak_rss_reset()
    f = LaplacianFactor(net, kk, backend=backend, memory_limit=memory_limit)
    st = f.free(inputs, targets, superpose)
    g = rule.estimate(f, st)
    s = f.solver.stats
    stats = StepStats(f.backend, s.factor_nnz, s.factor_bytes, peak_rss() if measured else None, s.fallbacks)
    return StepResult(np.clip(kk - lr * g, net.k_min, net.k_max), st.cost, g, stats)


@dataclass
class TrainResult:
    """Outcome of :func:`train`: final conductances and the learning curves."""

    k: np.ndarray
    steps: list[int] = field(default_factory=list)
    train_cost: list[float] = field(default_factory=list)
    eval_cost: list[float] = field(default_factory=list)
    eval_metric: list[float] = field(default_factory=list)


def train(
    net: ResistorNetwork,
    inputs: ArrayLike,
    targets: ArrayLike,
    rule: Rule,
    *,
    steps: int,
    lr: float,
    batch_size: int | None = None,
    seed: int = 0,
    eval_inputs: ArrayLike | None = None,
    eval_targets: ArrayLike | None = None,
    metric=None,
    eval_every: int = 10,
    progress: bool = False,
    k0: ArrayLike | None = None,
    backend: str | None = None,
    memory_limit: float | None = None,
) -> TrainResult:
    """Train the conductances of ``net`` with ``rule`` for ``steps`` steps of size ``lr``.

    Args:
        inputs: the training inputs, ``B >= 1`` samples.
        targets: the training targets.
        steps: number of steps (an integer ``>= 0``).
        lr: step size, finite and ``>= 0``.
        batch_size: samples per step, an integer ``>= 1`` (default: all, full batch; a size ``>= B`` is the
            full batch too); minibatches drawn with ``seed``.
        eval_inputs: the inputs of a held-out set (default: the training set) evaluated every ``eval_every``
            (an integer ``>= 1``) steps and after the last.
        eval_targets: the targets of that held-out set.
        metric (Callable | None): optional ``metric(outputs (B, m) ndarray, targets) -> float`` (e.g. accuracy).
        k0: initial conductances, inside ``[k_min, k_max]`` (default ``net.k``).
        backend: as for :func:`learning_step` (one symbolic analysis serves the whole run).
        memory_limit: as for :func:`learning_step`.

    Raises:
        ValueError: for each of the above out of range (naming the argument), and bad samples.

    Returns:
        :class:`TrainResult` (``k`` is the final conductance vector; ``net`` itself is not modified).

    Example:
        >>> import torch, doubleopt as do
        >>> net = do.physical.random_network(60, n_inputs=2, n_outputs=1, seed=0)
        >>> x = torch.rand(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        >>> t = 0.2 * x[:, :1] + 0.5 * x[:, 1:]
        >>> res = do.physical.train(net, x, t, do.physical.ExactGradient(), steps=100, lr=5.0)
        >>> res.eval_cost[-1] < 0.5 * res.eval_cost[0]
        True
    """
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    lr = _check_lr(lr)
    eval_every = _check_count("eval_every", eval_every, 1)
    if batch_size is not None:
        batch_size = _check_count("batch_size", batch_size, 1)
    _check_rule(rule)
    if (eval_inputs is None) != (eval_targets is None):
        raise ValueError("pass both eval_inputs and eval_targets, or neither")
    x = net._check_inputs(inputs)
    t = net._check_targets(targets, x.shape[0])
    xe = x if eval_inputs is None else net._check_inputs(eval_inputs, "eval_inputs")
    te = t if eval_targets is None else net._check_targets(eval_targets, xe.shape[0], "eval_targets")
    k = net.check_k_in_range(net.k if k0 is None else k0, "k0")
    rng = np.random.default_rng(seed)
    res = TrainResult(k)

    def evaluate(step: int) -> None:
        f = LaplacianFactor(net, k, backend=backend, memory_limit=memory_limit)
        st = f.free(xe, te)
        res.steps.append(step)
        res.eval_cost.append(st.cost)
        if metric is not None:
            res.eval_metric.append(float(metric(st.out, te)))

    bar = None
    if progress:
        from .._progress import progress_bar

        bar = progress_bar(steps, f"train[{type(rule).__name__}]", leave=False)
    try:
        for s in range(steps):
            if s % eval_every == 0:
                evaluate(s)
            if batch_size is None or batch_size >= len(x):
                xb, tb = x, t
            else:
                idx = rng.choice(len(x), batch_size, replace=False)
                xb, tb = x[idx], t[idx]
            out = learning_step(net, xb, tb, rule, lr, k=k, backend=backend, memory_limit=memory_limit)
            k = out.k
            res.train_cost.append(out.cost)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(cost=f"{out.cost:.3g}", refresh=False)
    finally:
        if bar is not None:
            bar.close()
    evaluate(steps)
    res.k = k
    return res


def cosine(a: ArrayLike, b: ArrayLike) -> float:
    """Cosine similarity of two vectors."""
    a, b = (
        torch.as_tensor(a, dtype=torch.float64).flatten(),
        torch.as_tensor(b, dtype=torch.float64).flatten(),
    )
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-300))
