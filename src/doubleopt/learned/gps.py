r"""Guided policy search (Li & Malik 2017) for the :class:`~doubleopt.learned.PolicyOptimizer`: ``method="gps"``.

Guided policy search alternates two steps over a fixed set of :math:`M` training objectives
(an :class:`~doubleopt.learned.ObjectiveSetTask`): a **C-step** that optimizes, per objective :math:`i`, a local
time-varying linear-Gaussian controller :math:`p_i(u_t \mid y_t) = N(K_t y_t + k_t, \Sigma_t)` under a KL
constraint to the current policy, and an **S-step** that fits the policy to those controllers by supervised
learning. This is the mirror-descent form of GPS with on-policy samples (Montgomery & Levine 2016), the variant
whose C-step is a KL-constrained LQR and whose S-step is a KL regression, as in the paper.

**The local problem.** The controller's state is the iterate :math:`y_t \in \mathbb R^n` and its action the raw
step :math:`u_t = y_{t+1} - y_t`. The dynamics :math:`y_{t+1} = y_t + u_t` are known and linear, so, unlike GPS
on physical systems, no dynamics are fitted; the cost of objective :math:`i` is its value
:math:`\sum_{t=1}^{T} f_i(y_t)` (minus the MDP's return), expanded to second order around the mean of the
samples, :math:`f_i(y) \approx f_i(\bar y_t) + g_t^\top \delta + \tfrac12 \delta^\top H_t \delta`,
:math:`\delta = y - \bar y_t`, with :math:`g_t` the samples' mean gradient and :math:`H_t` the mean Hessian of a
few samples, each projected onto the positive semidefinite cone (eigenvalues clamped at 0: the families are
non-convex). The policy, whose mean reads the whole history, is
linearized per objective and step by ridge regression of its mean step on :math:`y_t` over the samples,
:math:`\bar\pi_t(u \mid y) = N(\bar K_t y + \bar k_t, \bar\Sigma_t)` with :math:`\bar\Sigma_t` the policy's own
(diagonal) covariance.

**C-step.** :math:`\min_{p} E_p[\sum_t f(y_t)]` subject to :math:`\sum_t E_p[\mathrm{KL}(p(u_t|y_t) \,\|\,
\bar\pi_t(u_t|y_t))] \le \epsilon T n`. For a multiplier :math:`\eta`, the Lagrangian divided by :math:`\eta` is a
maximum-entropy LQR with the cost :math:`f/\eta - \log\bar\pi`; its backward Riccati pass gives

.. math::
    Q_{uu} = V'' + \bar P, \quad Q_{uy} = V'' - \bar P \bar K, \quad Q_{yy} = V'' + \bar K^\top \bar P \bar K,
    \quad q_u = v' - \bar P \bar k, \quad q_y = v' + \bar K^\top \bar P \bar k,

.. math::
    K = -Q_{uu}^{-1} Q_{uy}, \quad k = -Q_{uu}^{-1} q_u, \quad \Sigma = Q_{uu}^{-1},

with :math:`\bar P = \bar\Sigma^{-1}` and :math:`(V'', v')` the value function's quadratic and linear terms at
:math:`t + 1` (plus the cost of :math:`y_{t+1}`). :math:`\eta` is found per objective by bisection on
:math:`\log\eta` so that the KL, computed exactly by propagating the Gaussian state distribution forward, meets
the bound (or :math:`\eta` is at the bottom of its bracket when the bound is not active).

**S-step.** On the states visited by the policy's samples (the features the policy saw there, rebuilt from the
stored iterates, :meth:`~doubleopt.learned.PolicyFeatures.at`), the policy minimizes
:math:`E[\mathrm{KL}(\pi(\cdot|s_t) \,\|\, p_i(\cdot|y_t))]`, i.e. per state and divided by :math:`n`,

.. math::
    \tfrac{1}{2n}\Big[(\mu_\pi - \mu_p)^\top \Sigma^{-1} (\mu_\pi - \mu_p)
    + \mathrm{tr}(\Sigma^{-1} \Sigma_\pi) - \log\det \Sigma_\pi\Big],
    \qquad \mu_\pi = \alpha s_g \mu_\phi(z), \ \Sigma_\pi = \sigma^2 \alpha^2 s_g^2 I,

in minibatches: each :meth:`GPS.estimate` is one minibatch gradient (the :class:`~doubleopt.learned.meta.
MetaTrainer` applies it with Adam); every ``inner_steps`` meta-steps a new GPS iteration samples the policy and
runs the C-step. Samples that reach a non-finite iterate, value or gradient are dropped and counted
(``GPSState.nonfinite``); an objective without finite samples sits out that iteration.

References:
    K. Li, J. Malik, "Learning to optimize", ICLR 2017 (arXiv:1606.01885).
    S. Levine, P. Abbeel, "Learning neural network policies with guided policy search under unknown
    dynamics", NeurIPS 2014.
    W. Montgomery, S. Levine, "Guided policy search via approximate mirror descent", NeurIPS 2016.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .._tree import tree_index
from ._tasks import ObjectiveSetTask
from .estimators import EstimatorState, MetaGradientEstimator, register_estimator
from .policy import PolicyOptimizer

if TYPE_CHECKING:
    from .meta import MetaTrainer


@dataclass
class PolicySamples:
    """``R`` sampled runs of the policy: iterates, values, gradients and the policy's mean steps and units."""

    objective: Tensor  # (R,) int64 index of the run's objective in the task
    y: Tensor  # (R, T + 1, n) iterates
    values: Tensor  # (R, T + 1)
    grads: Tensor  # (R, T + 1, n)
    mean_step: Tensor  # (R, T, n) the policy's mean raw step at each visited state
    unit: Tensor  # (R, T) the step unit alpha * s_g at each visited state
    finite: Tensor  # (R,) bool: the whole run stayed finite


@torch.no_grad()
def sample_policy(
    policy: PolicyOptimizer,
    task: ObjectiveSetTask,
    objective: Tensor,
    horizon: int,
    generator: torch.Generator,
    noise: torch.Generator,
) -> PolicySamples:
    """Run the stochastic policy for ``horizon`` steps on ``task``'s objectives ``objective (R,)`` (runs of one
    objective adjacent) from a fresh starting point per objective, shared by its runs (drawn with ``generator``;
    the action noise with ``noise``)."""
    x = tree_index(task.contexts, objective)
    problem = task.problem
    first, where = torch.unique_consecutive(objective, return_inverse=True)
    y = problem.init(tree_index(task.contexts, first), generator=generator)[where]  # one start per objective
    value, grad = problem.value_and_grad(y, x)
    feats = policy.features
    hist = feats.init(value, grad)
    ys, vs, gs, means, units = [y], [value], [grad], [], []
    std = policy.log_std.detach().exp()
    for _ in range(horizon):
        unit = policy.unit(hist)
        mean = unit[:, None] * policy.mean(feats(hist))
        eps = torch.randn(mean.shape, generator=noise, dtype=mean.dtype)
        step = (mean + std.to(mean.dtype) * unit[:, None] * eps).to(y.dtype)
        y = y + step
        value, grad = problem.value_and_grad(y, x)
        hist = feats.push(hist, value, grad, step)
        ys.append(y), vs.append(value), gs.append(grad), means.append(mean), units.append(unit)
    Y, V, G = torch.stack(ys, 1), torch.stack(vs, 1), torch.stack(gs, 1)
    finite = torch.isfinite(Y).flatten(1).all(1) & torch.isfinite(V).all(1) & torch.isfinite(G).flatten(1).all(1)
    return PolicySamples(objective, Y, V, G, torch.stack(means, 1), torch.stack(units, 1), finite)


def cost_expansion(
    task: ObjectiveSetTask, objective: Tensor, points: Tensor, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor]:
    """``(f, g, H)`` of objective ``objective[m]`` at ``points[m, t]`` ``(M, S, n)``, evaluated in ``dtype``: values
    ``(M, S)``, gradients ``(M, S, n)`` and Hessians ``(M, S, n, n)`` projected onto the PSD cone (float64)."""
    M, S, n = points.shape
    x = tree_index(task.contexts, objective.repeat_interleave(S))
    y = points.reshape(M * S, n).to(dtype).detach().requires_grad_(True)
    with torch.enable_grad():
        value = task.problem.objective(y, x)
        (grad,) = torch.autograd.grad(value.sum(), y, create_graph=True)
        rows = [torch.autograd.grad(grad[:, i].sum(), y, retain_graph=i < n - 1)[0] for i in range(n)]
    H = torch.stack(rows, 1).detach().double()
    H = 0.5 * (H + H.transpose(-1, -2))
    evals, evecs = torch.linalg.eigh(H)
    H = (evecs * evals.clamp_min(0.0)[..., None, :]) @ evecs.transpose(-1, -2)
    return value.detach().double().reshape(M, S), grad.detach().double().reshape(M, S, n), H.reshape(M, S, n, n)


@dataclass
class LinearGaussian:
    """Time-varying linear-Gaussian controllers of ``M`` objectives: ``u_t ~ N(K_t y_t + k_t, Sigma_t)``."""

    K: Tensor  # (M, T, n, n)
    k: Tensor  # (M, T, n)
    precision: Tensor  # (M, T, n, n) Sigma_t^{-1}
    chol: Tensor  # (M, T, n, n) its Cholesky factor


def lqr_backward(
    eta: Tensor, cost_H: Tensor, cost_h: Tensor, pol_K: Tensor, pol_k: Tensor, pol_prec: Tensor
) -> LinearGaussian:
    r"""The maximum-entropy LQR controller for the cost :math:`\sum_{t\ge1} f(y_t)/\eta - \log\bar\pi` (module
    docstring). ``eta (M,)``; the cost of :math:`y_t` is :math:`\tfrac12 y^\top H_t y + h_t^\top y` (+ const) with
    ``cost_H (M, T+1, n, n)``, ``cost_h (M, T+1, n)`` (index 0 unused); linearized policy ``pol_K (M, T, n, n)``,
    ``pol_k (M, T, n)``, ``pol_prec (M, T, n, n)``."""
    M, T1, n = cost_h.shape
    T = T1 - 1
    inv_eta = (1.0 / eta)[:, None, None]

    def state_cost(t):  # quadratic and linear terms of f(y_t)/eta in absolute coordinates
        return cost_H[:, t] * inv_eta, cost_h[:, t] * inv_eta[..., 0]

    Vyy, vy = state_cost(T)
    Ks, ks, precs, chols = [None] * T, [None] * T, [None] * T, [None] * T
    for t in range(T - 1, -1, -1):
        P, Kb, kb = pol_prec[:, t], pol_K[:, t], pol_k[:, t]
        Pk = (P @ kb[..., None])[..., 0]
        Quu = Vyy + P
        Quy = Vyy - P @ Kb
        Qyy = Vyy + Kb.transpose(-1, -2) @ P @ Kb
        qu = vy - Pk
        qy = vy + (Kb.transpose(-1, -2) @ Pk[..., None])[..., 0]
        Quu = 0.5 * (Quu + Quu.transpose(-1, -2))
        L = torch.linalg.cholesky(Quu)
        K = -torch.cholesky_solve(Quy, L)
        k = -torch.cholesky_solve(qu[..., None], L)[..., 0]
        Ks[t], ks[t], precs[t], chols[t] = K, k, Quu, L
        Vyy = Qyy + Quy.transpose(-1, -2) @ K
        vy = qy + (Quy.transpose(-1, -2) @ k[..., None])[..., 0]
        if t > 0:
            H, h = state_cost(t)
            Vyy, vy = Vyy + H, vy + h
        Vyy = 0.5 * (Vyy + Vyy.transpose(-1, -2))
    return LinearGaussian(torch.stack(Ks, 1), torch.stack(ks, 1), torch.stack(precs, 1), torch.stack(chols, 1))


def trajectory_kl(
    ctrl: LinearGaussian,
    pol_K: Tensor,
    pol_k: Tensor,
    pol_prec: Tensor,
    mu0: Tensor,
    cov0: Tensor,
    pol_logdet: Tensor | None = None,
) -> Tensor:
    r"""``(M,)`` :math:`\sum_t E_{p}[\mathrm{KL}(p(u_t|y_t) \| \bar\pi(u_t|y_t))]` under the controller's own state
    distribution, propagated exactly from :math:`y_0 \sim N(\mu_0, S_0)` (``mu0 (M, n)``, ``cov0 (M, n, n)``).
    ``pol_logdet (M, T)``: :math:`\log\det` of ``pol_prec`` if known."""
    M, T, n, _ = ctrl.K.shape
    eye = torch.eye(n, dtype=ctrl.K.dtype)
    mu, S = mu0, cov0
    total = mu0.new_zeros(M)
    if pol_logdet is None:
        pol_logdet = torch.linalg.slogdet(pol_prec)[1]
    ctrl_logdet = 2 * ctrl.chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # (M, T)
    for t in range(T):
        K, k, P = ctrl.K[:, t], ctrl.k[:, t], pol_prec[:, t]
        Sigma = torch.cholesky_inverse(ctrl.chol[:, t])
        dK, dk = K - pol_K[:, t], k - pol_k[:, t]
        dm = (dK @ mu[..., None])[..., 0] + dk
        quad = (dm[:, None, :] @ P @ dm[..., None])[:, 0, 0] + ((dK.transpose(-1, -2) @ P @ dK) * S).sum((-1, -2))
        tr = (P * Sigma).sum((-1, -2))
        total = total + 0.5 * (tr - n + ctrl_logdet[:, t] - pol_logdet[:, t] + quad)
        A = eye + K
        mu = (A @ mu[..., None])[..., 0] + k
        S = A @ S @ A.transpose(-1, -2) + Sigma
        S = 0.5 * (S + S.transpose(-1, -2))
    return total


def linearize_policy(samples_y: Tensor, samples_mean: Tensor, ridge: float) -> tuple[Tensor, Tensor]:
    r"""Ridge regression of the policy's mean step on the iterate, per objective and step: ``samples_y (M, N, T,
    n)`` (the states), ``samples_mean (M, N, T, n)`` -> ``(K_bar (M, T, n, n), k_bar (M, T, n))``. The ridge is
    ``ridge`` times the mean variance of the states (plus a floor), so few samples shrink :math:`\bar K` to 0."""
    ybar = samples_y.mean(1, keepdim=True)
    mbar = samples_mean.mean(1, keepdim=True)
    Yc, Mc = (samples_y - ybar).movedim(1, 2), (samples_mean - mbar).movedim(1, 2)  # (M, T, N, n)
    n = samples_y.shape[-1]
    XtX = Yc.transpose(-1, -2) @ Yc  # (M, T, n, n)
    scale = XtX.diagonal(dim1=-2, dim2=-1).mean(-1)  # (M, T)
    lam = ridge * scale + 1e-12 * (1.0 + scale)
    A = XtX + lam[..., None, None] * torch.eye(n, dtype=XtX.dtype)
    K = torch.linalg.solve(A, Yc.transpose(-1, -2) @ Mc).transpose(-1, -2)  # (M, T, n, n)
    k = mbar[:, 0] - (K @ ybar[:, 0, ..., None])[..., 0]
    return K, k


@dataclass
class GPSState(EstimatorState):
    """The current GPS iteration's S-step data (tensors, saved in checkpoints) and counters."""

    objective: Tensor  # (R,) objective of each sampled run (runs of objectives without finite samples dropped)
    y: Tensor  # (R, T + 1, n) iterates of the runs
    values: Tensor  # (R, T + 1)
    grads: Tensor  # (R, T + 1, n)
    target: Tensor  # (R, T, n) the controller's mean step at each visited state
    precision: Tensor  # (M, T, n, n) the controllers' precisions (by objective)
    order: Tensor  # (R * T,) int64: the S-step's shuffled (run, step) pairs
    position: Tensor  # () int64: next minibatch's start in order (cyclic)
    iteration: Tensor  # () int64 GPS iterations done
    nonfinite: Tensor  # () int64 sampled runs dropped for a non-finite iterate, value or gradient
    sample_cost: Tensor  # () float64 mean objective over the steps of the latest samples (finite runs)
    kl: Tensor  # () float64 mean KL of the latest controllers to the linearized policy (per step and coordinate)


@register_estimator("gps")
@dataclass(frozen=True)
class GPS(MetaGradientEstimator):
    r"""Guided policy search for a :class:`~doubleopt.learned.PolicyOptimizer` (module docstring).

    One GPS iteration = ``samples`` runs of the stochastic policy per training objective, the C-step, then
    ``inner_steps`` meta-steps of the S-step, each one minibatch of ``minibatch`` (run, step) pairs. The horizon
    is ``MetaConfig.horizon``; the trainer's ``meta_lr`` and ``clip`` apply to the S-step.

    Args:
        samples: runs of the policy per objective per iteration (:math:`N`).
        kl_step: :math:`\epsilon`, the bound on the mean KL per step and per coordinate between a controller and the
            policy (the bound on the trajectory's KL is :math:`\epsilon T n`).
        inner_steps: S-step minibatch gradient steps (meta-steps) per GPS iteration.
        minibatch: (run, step) pairs per S-step minibatch.
        ridge: the policy linearization's ridge, relative to the states' variance.
        bisections: bisection steps on :math:`\log\eta` per C-step.
        hessian_samples: samples per objective whose Hessians are averaged into the cost model (the gradients
            of all samples are).

    Example:
        >>> import torch, doubleopt as do
        >>> from doubleopt.learned.meta import MetaConfig, MetaTrainer
        >>> task = do.learned.li_malik_task("logistic", n_train=6)
        >>> opts = {"samples": 3, "inner_steps": 2, "minibatch": 64}
        >>> cfg = MetaConfig(method="gps", unroll=10, horizon=10, options=opts)
        >>> tr = MetaTrainer(do.learned.PolicyOptimizer(history=5), task, cfg)
        >>> info = [tr.step() for _ in range(4)][-1]
        >>> int(tr.state.iteration), info.skipped
        (2, False)
    """

    samples: int = 8
    kl_step: float = 0.25
    inner_steps: int = 50
    minibatch: int = 1024
    ridge: float = 0.1
    bisections: int = 16
    hessian_samples: int = 2

    def __post_init__(self):
        if self.samples < 2:
            raise ValueError(f"samples must be >= 2 (the policy is linearized from them), got {self.samples}")
        if not self.kl_step > 0:
            raise ValueError(f"kl_step must be > 0, got {self.kl_step}")
        if min(self.inner_steps, self.minibatch, self.bisections, self.hessian_samples) < 1:
            raise ValueError("inner_steps, minibatch, bisections and hessian_samples must be >= 1")
        if not self.ridge >= 0:
            raise ValueError(f"ridge must be >= 0, got {self.ridge}")

    def _check(self, trainer: MetaTrainer) -> None:
        if not isinstance(trainer.lopt, PolicyOptimizer):
            raise TypeError(f"method 'gps' trains a PolicyOptimizer, got {type(trainer.lopt).__name__}")
        if not isinstance(trainer.task, ObjectiveSetTask):
            raise TypeError(
                "method 'gps' needs a fixed set of training objectives (an ObjectiveSetTask, e.g. "
                f"li_malik_task(...)): it keeps a controller per objective; got {type(trainer.task).__name__}"
            )

    def init(self, trainer: MetaTrainer) -> GPSState:
        self._check(trainer)
        n, T = trainer.task.problem.dim, trainer.config.horizon
        z = torch.zeros(0)
        return GPSState(
            carries=[],
            objective=torch.zeros(0, dtype=torch.int64),
            y=z.new_zeros(0, T + 1, n),
            values=z.new_zeros(0, T + 1),
            grads=z.new_zeros(0, T + 1, n),
            target=z.new_zeros(0, T, n),
            precision=z.new_zeros(0, T, n, n, dtype=torch.float64),
            order=torch.zeros(0, dtype=torch.int64),
            position=torch.tensor(0, dtype=torch.int64),
            iteration=torch.tensor(0, dtype=torch.int64),
            nonfinite=torch.tensor(0, dtype=torch.int64),
            sample_cost=torch.tensor(float("nan"), dtype=torch.float64),
            kl=torch.tensor(float("nan"), dtype=torch.float64),
        )

    def restart(self, trainer: MetaTrainer, state: GPSState, finite: bool) -> GPSState:
        return state  # no solver trajectories: each GPS iteration samples afresh

    # ---- C-step --------------------------------------------------------------------------------
    def c_step(self, trainer: MetaTrainer, state: GPSState) -> GPSState:
        """Sample the policy on every objective, fit the controllers; the new S-step data."""
        task, policy, T = trainer.task, trainer.lopt, trainer.config.horizon
        M, N = task.size, self.samples
        objective = torch.arange(M).repeat_interleave(N)
        s = sample_policy(policy, task, objective, T, trainer.gen, trainer.es_gen)
        nonfinite = state.nonfinite + int((~s.finite).sum())
        ok_obj = s.finite.reshape(M, N).sum(1) >= 2  # objectives with enough finite runs to linearize
        keep = s.finite & ok_obj.repeat_interleave(N)
        obj_ids = torch.nonzero(ok_obj)[:, 0]
        Mk = int(obj_ids.numel())
        if Mk == 0:
            raise FloatingPointError("GPS: every sampled run of the policy diverged; lower meta_lr or step_scale")
        # per kept objective, its finite runs (pad by repeating a finite one so shapes stay (Mk, N, ...))
        finite_mn = s.finite.reshape(M, N)[obj_ids]
        idx = torch.arange(N).expand(Mk, N)
        first = finite_mn.float().argmax(1, keepdim=True).expand(Mk, N)
        idx = torch.where(finite_mn, idx, first)
        runs = (obj_ids[:, None] * N + idx).reshape(-1)
        wts = finite_mn.double() / finite_mn.double().sum(1, keepdim=True)  # (Mk, N)
        Y = s.y[runs].double().reshape(Mk, N, T + 1, -1)
        means = s.mean_step[runs].double().reshape(Mk, N, T, -1)
        units = s.unit[runs].double().reshape(Mk, N, T)
        n = Y.shape[-1]
        ybar = (wts[:, :, None, None] * Y).sum(1)  # (Mk, T + 1, n)
        # the cost's quadratic model around the samples: f(y) ~ const + g'(y - ybar) + (y - ybar)'H(y - ybar)/2 with
        # g the samples' mean gradient and H the mean Hessian of the first hessian_samples (finite) samples
        gbar = (wts[:, :, None, None] * s.grads[runs].double().reshape(Mk, N, T + 1, -1)).sum(1)
        nh = min(self.hessian_samples, N)
        _, _, f_hess = cost_expansion(task, obj_ids, Y[:, :nh].reshape(Mk, nh * (T + 1), -1), s.y.dtype)
        cost_H = f_hess.reshape(Mk, nh, T + 1, *f_hess.shape[-2:]).mean(1)
        cost_h = gbar - (cost_H @ ybar[..., None])[..., 0]
        pol_K, pol_k = linearize_policy(Y[:, :, :T], means, self.ridge)
        var = (policy.log_std.detach().double().exp() * units) ** 2  # (Mk, N, T)
        pol_prec = torch.eye(n, dtype=torch.float64) / (wts[:, :, None] * var).sum(1)[..., None, None]
        mu0 = ybar[:, 0]  # the runs of an objective share their start: y_0 is known
        cov0 = torch.diag_embed(torch.full((Mk, n), 1e-12, dtype=torch.float64))
        cost_scale = s.values[keep].double().abs().mean().clamp_min(1e-12)
        ctrl, kl = self.solve_eta(cost_H / cost_scale, cost_h / cost_scale, pol_K, pol_k, pol_prec, mu0, cov0)
        # S-step data: the kept runs, with the controller's mean step at each visited state
        kept_runs = torch.nonzero(keep)[:, 0]
        pos = torch.searchsorted(obj_ids, objective[kept_runs])  # index into the kept objectives
        Yr = s.y[kept_runs].double()
        target = (ctrl.K[pos] @ Yr[:, :T, :, None])[..., 0] + ctrl.k[pos]
        R = int(kept_runs.numel())
        order = torch.randperm(R * T, generator=trainer.es_gen)
        return GPSState(
            carries=[],
            objective=pos,
            y=s.y[kept_runs],
            values=s.values[kept_runs],
            grads=s.grads[kept_runs],
            target=target.to(s.y.dtype),
            precision=ctrl.precision,
            order=order,
            position=torch.tensor(0, dtype=torch.int64),
            iteration=state.iteration + 1,
            nonfinite=nonfinite,
            sample_cost=s.values[keep][:, 1:].double().mean(),
            kl=(kl / (T * n)).mean(),
        )

    def solve_eta(self, cost_H, cost_h, pol_K, pol_k, pol_prec, mu0, cov0) -> tuple[LinearGaussian, Tensor]:
        """Bisection on :math:`\\log\\eta` per objective for :math:`\\mathrm{KL} \\le \\epsilon T n`; the controllers at
        the smallest :math:`\\eta` in the bracket that meets the bound."""
        M, T = pol_k.shape[:2]
        target = self.kl_step * T * pol_k.shape[-1]
        lo = torch.full((M,), -12.0, dtype=torch.float64)  # log eta: small eta = far from the policy
        hi = torch.full((M,), 20.0, dtype=torch.float64)

        pol_logdet = torch.linalg.slogdet(pol_prec)[1]

        def solve(log_eta):
            ctrl = lqr_backward(log_eta.exp(), cost_H, cost_h, pol_K, pol_k, pol_prec)
            return ctrl, trajectory_kl(ctrl, pol_K, pol_k, pol_prec, mu0, cov0, pol_logdet)

        ctrl_lo, kl_lo = solve(lo)
        inactive = kl_lo <= target  # the bound does not bind even at the smallest eta
        for _ in range(self.bisections):
            mid = 0.5 * (lo + hi)
            _, kl = solve(mid)
            ok = kl <= target
            hi = torch.where(ok, mid, hi)
            lo = torch.where(ok, lo, mid)
        log_eta = torch.where(inactive, torch.full_like(hi, -12.0), hi)
        return solve(log_eta)

    # ---- S-step --------------------------------------------------------------------------------
    def estimate(self, trainer: MetaTrainer, state: GPSState) -> tuple[float, list[Tensor], GPSState]:
        """One S-step minibatch gradient; first a new GPS iteration (samples + C-step) every ``inner_steps``."""
        self._check(trainer)
        T = trainer.config.horizon
        if trainer.meta_step % self.inner_steps == 0 or state.order.numel() == 0:
            state = self.c_step(trainer, state)
        total = state.order.numel()
        start = int(state.position) % total
        pick = state.order[start : start + self.minibatch]
        run, t = pick // T, pick % T
        policy = trainer.lopt
        hist = policy.features.at(state.values, state.grads, state.y, run, t)
        params = list(policy.parameters())
        with torch.enable_grad():
            unit = policy.unit(hist).double()
            mu = unit[:, None] * policy.mean(policy.features(hist)).double()
            P = state.precision[state.objective[run], t]  # (b, n, n)
            d = mu - state.target[run, t].double()
            n = d.shape[-1]
            log_std = policy.log_std.double()
            quad = (d[:, None, :] @ P @ d[..., None])[:, 0, 0]
            tr = (2 * log_std).exp() * unit**2 * P.diagonal(dim1=-2, dim2=-1).sum(-1)
            loss = (0.5 * (quad + tr) / n - log_std).mean()
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g.to(p.dtype) for p, g in zip(params, grads)]
        end = start + pick.numel()
        return float(loss.detach()), grads, replace(state, position=torch.tensor(end % total, dtype=torch.int64))


__all__ = [
    "GPS",
    "GPSState",
    "LinearGaussian",
    "PolicySamples",
    "sample_policy",
    "cost_expansion",
    "lqr_backward",
    "trajectory_kl",
    "linearize_policy",
]
