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

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

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
        if not (self.beta > 0):
            raise ValueError(f"EquilibriumPropagation needs beta > 0, got {self.beta}")

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
    net: ResistorNetwork, inputs: ArrayLike, targets: ArrayLike, k: ArrayLike | None = None
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
    f = net.factorize(k)
    st = f.free(inputs, targets)
    return st.cost, torch.from_numpy(ExactGradient().estimate(f, st))


def coupled_learning_limit(
    net: ResistorNetwork, inputs: ArrayLike, targets: ArrayLike, k: ArrayLike | None = None
) -> Tensor:
    r"""The :math:`\eta \to 0` limit of coupled learning, :math:`2\overline{J^\top S^{-1} r}`, ``(E,)``.

    Equal to ``2 * exact_gradient`` divided by :math:`S` for one output; for several outputs it is the
    gradient of the cost measured in the metric :math:`S^{-1}` (S = output-to-output resistance matrix).
    """
    f = net.factorize(k)
    st = f.free(inputs, targets)
    w = f._solve_S(st.residual.T).T
    return torch.from_numpy(-2.0 * mean_product(st.coef, st.drop_basis, w, f.dZ))


def gradient_estimate(
    net: ResistorNetwork, inputs: ArrayLike, targets: ArrayLike, rule: Rule, k: ArrayLike | None = None
) -> Tensor:
    """The update direction ``g`` ``(E,)`` of ``rule`` (a step is ``k - lr * g``)."""
    f = net.factorize(k)
    return torch.from_numpy(rule.estimate(f, f.free(inputs, targets)))


@dataclass
class StepResult:
    """One learning step: the new conductances, the cost *before* the step and the direction used."""

    k: np.ndarray
    cost: float
    direction: np.ndarray


def learning_step(
    net: ResistorNetwork,
    k: np.ndarray,
    inputs: np.ndarray,
    targets: np.ndarray,
    rule: Rule,
    lr: float,
    superpose: bool | None = None,
) -> StepResult:
    """One step of ``rule``: factorize once, free state, clamped/nudged/adjoint state, clipped update.

    ``superpose`` is passed to :meth:`LaplacianFactor.free` (default: superpose when it saves solves).
    """
    f = LaplacianFactor(net, k)
    st = f.free(inputs, targets, superpose)
    g = rule.estimate(f, st)
    return StepResult(np.clip(k - lr * g, net.k_min, net.k_max), st.cost, g)


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
) -> TrainResult:
    """Train the conductances of ``net`` with ``rule`` for ``steps`` steps of size ``lr``.

    Args:
        batch_size: samples per step (default: all, full batch); minibatches drawn with ``seed``.
        eval_inputs, eval_targets: a held-out set (default: the training set) evaluated every ``eval_every``.
        metric: optional ``metric(outputs (B, m) ndarray, targets) -> float`` (e.g. accuracy).
        k0: initial conductances (default ``net.k``).

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
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    x = net._check_inputs(inputs)
    t = net._check_targets(targets, x.shape[0])
    xe = x if eval_inputs is None else net._check_inputs(eval_inputs)
    te = t if eval_targets is None else net._check_targets(eval_targets, xe.shape[0])
    k = net._k(k0).copy()
    rng = np.random.default_rng(seed)
    res = TrainResult(k)

    def evaluate(step: int) -> None:
        f = LaplacianFactor(net, k)
        st = f.free(xe, te)
        res.steps.append(step)
        res.eval_cost.append(st.cost)
        if metric is not None:
            res.eval_metric.append(float(metric(st.out, te)))

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=f"train[{type(rule).__name__}]", unit="step", leave=False)
    try:
        for s in range(steps):
            if s % eval_every == 0:
                evaluate(s)
            if batch_size is None or batch_size >= len(x):
                xb, tb = x, t
            else:
                idx = rng.choice(len(x), batch_size, replace=False)
                xb, tb = x[idx], t[idx]
            out = learning_step(net, k, xb, tb, rule, lr)
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
