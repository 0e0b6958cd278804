r"""Amortized warm starts for parametric QPs: a model predicts the primal-dual point, the interior point refines.

For a family of QPs whose data depend on a context (e.g. the expected returns of
:class:`~doubleopt.problems.PortfolioQP`), a model :math:`x \mapsto (\hat z, \hat s, \hat\lambda, \hat\nu)` is
trained by regression to the interior-point method's own optima (computed once and cached by
:func:`~doubleopt.amortized.fit`); a new instance is then solved from that point instead of the cold start.

To reuse the amortization framework unchanged (``FullyAmortized`` / ``SemiAmortized`` / ``Safeguarded`` /
``fit`` / ``KKTResidual``), the *primal-dual point is the variable*:

* :class:`PrimalDualQP` wraps a QP family; its ``y`` is the packed point ``[z, s, lam, nu]``
  (:func:`~doubleopt.problems.qp.pack_start`), its certificate the KKT residual + duality gap of that point
  (:meth:`~doubleopt.problems.QPProblem.kkt_residual`);
* :class:`WarmStartQP` is :class:`~doubleopt.solvers.QP` on that variable: it starts from ``y`` (warm) or from
  the CVXOPT cold start (``warm=False``), optionally after two classical warm-start repairs:

  - ``center = mu0``: :math:`s, \lambda \leftarrow \max(\hat s, \mu_0), \max(\hat\lambda, \mu_0)` -- a point
    near the boundary is far from the central path and the interior point then crawls; pushing it back to
    complementarity :math:`\approx \mu_0` trades accuracy of the start for well-centred steps
    (Gondzio 1998; Yildirim & Wright 2002; John & Yildirim 2008);
  - ``polish=True``: guess the active set :math:`\mathcal A = \{i: \hat\lambda_i > \hat s_i\}` and solve the
    equality-constrained QP :math:`\min \tfrac12 z^\top Qz + q^\top z` s.t. :math:`Az = b,\ G_{\mathcal A} z =
    h_{\mathcal A}` by one batched KKT solve (OSQP's solution polishing, Stellato et al. 2020; the active-set
    prediction of Bertsimas & Stellato 2021) with the interior point's reduced KKT factorization
    (:meth:`~doubleopt.solvers.QP.polish`). If the guess is right the result is the optimum; the
    polished point is kept only where it passes the KKT certificate (``polish_tol``), else the (centred)
    prediction is used. It costs about one interior-point iteration (one factorization).

* :class:`QPWarmStartNet` is the model: an MLP on the standardized varying QP data ``(q, b, h)`` with
  softplus heads for ``s, lam > 0``.

Example:
    >>> import torch, doubleopt as do
    >>> from doubleopt.amortized.qp_warmstart import PrimalDualQP, WarmStartQP
    >>> fam = PrimalDualQP(do.problems.PortfolioQP(n_assets=8))
    >>> x = fam.sample(4, seed=0)
    >>> exact = do.solve(fam, WarmStartQP(warm=False), x, tol=1e-10)  # cold solve, packed y
    >>> solver = WarmStartQP(qp=do.solvers.QP(warm_start_floor=1e-12))  # keep the start as it is
    >>> again = do.solve(fam, solver, x, exact.y, tol=1e-8)  # warm from the optimum
    >>> int(again.num_steps.max())
    0

References:
    Amos, "Tutorial on amortized optimization", 2023 (section on warm starts).
    Gondzio, "Warm start of the primal-dual method applied in the cutting-plane scheme", Math. Prog. 1998.
    Yildirim & Wright, "Warm-start strategies in interior-point methods for linear programming", SIOPT 2002.
    Stellato et al., "OSQP: an operator splitting solver for quadratic programs", Math. Prog. Comp. 2020.
    Bertsimas & Stellato, "The voice of optimization", Machine Learning 2021.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .._problem import ProblemFamily
from .._tree import tree_index
from ..problems.qp import QPData, QPProblem, QPStart, pack_start, qp_kkt_residual, unpack_start
from ..solvers._base import Solver
from ..solvers.qp import QP, QPState, take_qp_data

__all__ = ["PrimalDualQP", "WarmStartQP", "WarmQPState", "QPWarmStartNet", "polish_start", "qp_features"]


class PrimalDualQP(ProblemFamily):
    """A QP family whose variable is the packed primal-dual point ``y = [z, s, lam, nu]`` ``(B, n + 2m + p)``.

    ``objective`` is the QP objective of ``z``; ``kkt_residual`` the certificate; ``sample`` / ``check_context``
    delegate to ``base``; ``init`` is the interior point's cold start, packed. Solve it with :class:`WarmStartQP`.

    Args:
        base: a :class:`~doubleopt.problems.QPProblem` family (e.g. ``PortfolioQP``).
    """

    def __init__(self, base: QPProblem):
        super().__init__()
        if not isinstance(base, QPProblem):
            raise TypeError(f"PrimalDualQP wraps a do.problems.QPProblem family, got {type(base).__name__}")
        self.base = base
        x = base.sample(1, seed=0) if hasattr(base, "_sample") else None
        self.sizes = (x.n, x.m, x.p) if x is not None else None
        self.dim = sum((x.n, 2 * x.m, x.p)) if x is not None else 0

    def _sample(self, batch_size, generator):
        return self.base._sample(batch_size, generator)

    def check_context(self, x: QPData) -> None:
        self.base.check_context(x)

    def objective(self, y: Tensor, x: QPData) -> Tensor:
        return self.base.objective(unpack_start(y, x).z, x)

    def smooth_value_and_grad(self, y: Tensor, x: QPData):
        st = unpack_start(y, x)
        value, gz = self.base.smooth_value_and_grad(st.z, x)
        return value, torch.cat([gz, torch.zeros_like(y[:, gz.shape[-1]:])], dim=-1)

    def kkt_residual(self, y: Tensor, x: QPData) -> Tensor:
        return self.base.kkt_residual(y, x)

    def init(self, x: QPData) -> Tensor:
        with torch.no_grad():
            z = QP().cold_start(x)
            st = QP().init(self.base, z, x)
        return pack_start(QPStart(z, st.s, st.lam, st.nu))


@dataclass
class WarmQPState:
    """State of :class:`WarmStartQP`: the interior point's state plus its primal iterate."""

    value: Tensor  # (B,) objective at z
    grad: Tensor  # (B, n) dual residual
    residual: Tensor  # (B,) scaled KKT residual of the interior point
    status: Tensor  # (B,) RESULTS code
    z: Tensor  # (B, n) primal iterate
    qp: QPState  # the interior point's state
    polished: Tensor  # (B,) bool: the start was replaced by its active-set polish
    polish_steps: Tensor  # (B,) int: polish rounds (one factorization each) spent on the instance


def polish_start(x: QPData, start: QPStart, qp: QP | None = None) -> QPStart:
    r"""Active-set polish of a primal-dual guess (:meth:`doubleopt.solvers.QP.polish`).

    Guesses the active set :math:`\mathcal A = \{i: \hat\lambda_i > \hat s_i\}` and solves the
    equality-constrained QP on it with the interior point's own reduced KKT factorization (one factorization,
    about the cost of one interior-point iteration). Exact optimum if the guess is right; otherwise a point
    that fails the KKT certificate, so the caller certifies it.
    """
    return (qp if qp is not None else QP()).polish(x, start)


@dataclass(frozen=True)
class WarmStartQP(Solver):
    r""":class:`~doubleopt.solvers.QP` on the packed primal-dual variable of :class:`PrimalDualQP`.

    Args:
        qp: the interior-point configuration (its ``warm_start_floor`` clips ``s, lam`` of the start).
        warm: start from ``y`` (the prediction); ``False``: ignore ``y`` and use the CVXOPT cold start.
        center: ``mu0``: raise ``s, lam`` of the start to at least ``mu0`` (a move toward the central path).
        polish: try the active-set polish (:func:`polish_start`) of the start first; kept per instance only
            where its KKT residual is ``<= polish_tol`` (then it is not centred either), else the prediction
            is used.
        polish_tol: acceptance threshold of a polished point (set it to the solve's ``tol``).
        polish_rounds: where a polish fails the certificate, re-guess the active set from the polished point,
            :math:`\mathcal A = \{i: \lambda_i + (G z - h)_i > 0\}` (the primal-dual active-set rule of
            Hintermueller, Ito & Kunisch 2002: drop rows with a negative multiplier, add violated rows) and
            polish again, up to this many polishes in all; each round runs only on the still uncertified
            instances.

    For a start to survive unchanged, ``qp.warm_start_floor`` must be tiny (``QP(warm_start_floor=1e-12)``);
    use ``center`` for the moderate floor of the other instances.
    """

    qp: QP = field(default_factory=QP)
    warm: bool = True
    center: float | None = None
    polish: bool = False
    polish_tol: float = 1e-6
    polish_rounds: int = 1

    def __post_init__(self):
        if self.polish_rounds < 1:
            raise ValueError(f"polish_rounds must be >= 1, got {self.polish_rounds}")

    def check_problem(self, problem) -> None:
        if not isinstance(problem, PrimalDualQP):
            raise ValueError(f"WarmStartQP solves PrimalDualQP (packed primal-dual y), got {type(problem).__name__}")

    def init(self, problem, y, x: QPData) -> WarmQPState:
        base = problem.base
        B = y.shape[0]
        polished = torch.zeros(B, dtype=torch.bool, device=y.device)
        polish_steps = torch.zeros(B, dtype=torch.int64, device=y.device)
        if not self.warm:
            z = self.qp.cold_start(x)
            st = self.qp.init(base, z, x)
        else:
            start = unpack_start(y, x)
            start = QPStart(start.z, start.s.clamp_min(0), start.lam.clamp_min(0), start.nu)
            if self.polish:
                start, polished, polish_steps = self._polish(x, start)
            s, lam = start.s, start.lam
            if self.center is not None:  # certified polished points are not moved
                keep = polished[:, None]
                s = torch.where(keep, s, s.clamp_min(self.center))
                lam = torch.where(keep, lam, lam.clamp_min(self.center))
            z = start.z
            st = self.qp.init(base, z, x.with_start(QPStart(z, s, lam, start.nu)))
        return WarmQPState(st.value, st.grad, st.residual, st.status, z, st, polished, polish_steps)

    def _polish(self, x: QPData, start: QPStart) -> tuple[QPStart, Tensor, Tensor]:
        """Polish rounds: ``(start with certified polished points swapped in, polished, polish_steps)``."""
        B = start.z.shape[0]
        out = [start.z.clone(), start.s.clone(), start.lam.clone(), start.nu.clone()]
        polished = torch.zeros(B, dtype=torch.bool, device=start.z.device)
        steps = torch.zeros(B, dtype=torch.int64, device=start.z.device)
        idx = torch.arange(B, device=start.z.device)
        xs, guess = x, start
        for _ in range(self.polish_rounds):
            pol = polish_start(xs, guess, self.qp)
            steps[idx] += 1
            ok = qp_kkt_residual(xs, pol.z, pol.lam, pol.nu) <= self.polish_tol
            done = idx[ok]
            polished[done] = True
            for o, t in zip(out, (pol.z, pol.s, pol.lam, pol.nu)):
                o[done] = t[ok]
            if bool(ok.all()):
                break
            keep = torch.nonzero(~ok).flatten()
            idx = idx[keep]
            xs, guess = take_qp_data(xs, keep), tree_index(pol, keep)
        return QPStart(*out), polished, steps

    def step(self, problem, y, x: QPData, state: WarmQPState):
        z, st = self.qp.step(problem.base, state.z, x, state.qp)
        y_new = pack_start(QPStart(z, st.s, st.lam, st.nu))
        return y_new, WarmQPState(st.value, st.grad, st.residual, st.status, z, st, state.polished,
                                  state.polish_steps)

    def stationarity(self, problem, y, x, state: WarmQPState) -> Tensor:
        return state.residual

    def postprocess(self, problem, y, x, state: WarmQPState, result):
        # the iterate is the state's point (after a polish or a clipped start it differs from the given y)
        st = state.qp
        return pack_start(QPStart(state.z, st.s, st.lam, st.nu)), result


def qp_features(x: QPData) -> Tensor:
    """The per-instance data a warm-start model reads: ``[q, b, h]`` ``(B, n + p + m)``."""
    return torch.cat([x.q, x.b, x.h], dim=-1)


class QPWarmStartNet(nn.Module):
    """MLP ``x -> [z, s, lam, nu]`` (packed) from the standardized QP data ``[q, b, h]``; ``s, lam`` by softplus.

    Call :meth:`set_normalization` with training contexts first (features that never vary are zeroed).

    Args:
        n, m, p: QP sizes. hidden, depth: MLP width and number of hidden layers.
        activation: ``"silu"`` or ``"relu"``. The solution of a parametric QP is piecewise affine in its data
            (explicit MPC, Bemporad et al. 2002), which a ReLU network represents exactly in the limit: on
            ``MPCQP`` ReLU predicts the active set markedly better (study ``qp_warmstart``).
    """

    def __init__(self, n: int, m: int, p: int, hidden: int = 256, depth: int = 2, activation: str = "silu",
                 dtype=torch.float64):
        super().__init__()
        acts = {"silu": nn.SiLU, "relu": nn.ReLU}
        if activation not in acts:
            raise ValueError(f"activation must be one of {sorted(acts)}, got {activation!r}")
        self.n, self.m, self.p = n, m, p
        d_in = n + p + m
        layers: list[nn.Module] = []
        d = d_in
        for _ in range(depth):
            layers += [nn.Linear(d, hidden, dtype=dtype), acts[activation]()]
            d = hidden
        layers.append(nn.Linear(d, n + 2 * m + p, dtype=dtype))
        self.net = nn.Sequential(*layers)
        self.register_buffer("mean", torch.zeros(d_in, dtype=dtype))
        self.register_buffer("inv_std", torch.ones(d_in, dtype=dtype))
        # output scaling: z, nu = center + scale * raw; s, lam = scale * softplus(raw)
        self.register_buffer("out_center", torch.zeros(n + 2 * m + p, dtype=dtype))
        self.register_buffer("out_scale", torch.ones(n + 2 * m + p, dtype=dtype))

    @torch.no_grad()
    def set_normalization(self, x: QPData, y: Tensor | None = None) -> QPWarmStartNet:
        """Standardize the inputs with the contexts ``x``; with solutions ``y`` (packed), scale the outputs
        (``z, nu``: mean and standard deviation per coordinate; ``s, lam``: mean magnitude)."""
        f = qp_features(x)
        std = f.std(0)
        self.mean.copy_(f.mean(0))
        self.inv_std.copy_(torch.where(std > 1e-12, 1.0 / std.clamp_min(1e-12), torch.zeros_like(std)))
        if y is not None:
            n, m = self.n, self.m
            pos = torch.zeros(y.shape[-1], dtype=torch.bool, device=y.device)
            pos[n:n + 2 * m] = True
            center = torch.where(pos, 0.0, y.mean(0))
            scale = torch.where(pos, y.abs().mean(0), y.std(0)).clamp_min(1e-6)
            self.out_center.copy_(center)
            self.out_scale.copy_(scale)
        return self

    def forward(self, x: QPData) -> Tensor:
        f = qp_features(x)
        if f.shape[-1] != self.mean.shape[0]:
            raise ValueError(f"QPWarmStartNet was built for n + p + m = {self.mean.shape[0]} features, the QP "
                             f"batch has {f.shape[-1]}")
        out = self.net(((f - self.mean) * self.inv_std).to(self.mean.dtype))
        z, s, lam, nu = torch.split(out, [self.n, self.m, self.m, self.p], dim=-1)
        sp = nn.functional.softplus
        raw = torch.cat([z, sp(s), sp(lam), nu], dim=-1)
        return (self.out_center + self.out_scale * raw).to(x.q.dtype)
