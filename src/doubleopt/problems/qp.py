r"""Convex quadratic programs as batched problems, and seeded QP families.

A batch of QPs

.. math:: \min_z \tfrac12 z^\top Q z + q^\top z \quad \text{s.t.} \quad A z = b,\; G z \le h

lives in a :class:`QPData` context (batch dimension first; ``p = 0`` equalities or ``m = 0`` inequalities
are empty tensors). :class:`QPProblem` is the :class:`~doubleopt.Problem` that
:class:`doubleopt.solvers.QP` (a batched primal-dual interior-point method) solves through
:func:`doubleopt.solve`; :func:`doubleopt.qp_solve` builds both from plain tensors.

Families (seeded ``sample``):

* :class:`RandomQP`: random *feasible* and bounded QPs (strictly feasible point planted), the benchmark
  distribution of OptNet / qpth.
* :class:`PortfolioQP`: a parametric Markowitz portfolio, ``min gamma w'Sw - mu'w`` s.t. ``1'w = 1``,
  ``0 <= w <= w_max``; the shared risk model is fixed and only the expected returns ``mu`` vary per
  instance, which is what an amortized model ``mu -> w*`` (or a warm start) learns.

**Warm starts.** A context may carry a :class:`QPStart` ``(z, s, lam, nu)``, an initial primal-dual
point (primal ``z`` ``(B, n)``, slacks ``s = h - G z`` ``(B, m)``, inequality multipliers ``lam >= 0``
``(B, m)``, equality multipliers ``nu`` ``(B, p)``). ``QP`` then starts from it (``s`` and ``lam``
clipped to at least ``QP.warm_start_floor``) instead of its own cold start. ``Solution.state`` of a
QP solve is a :class:`~doubleopt.solvers.qp.QPState` whose ``s, lam, nu`` (with ``Solution.y`` as ``z``)
form exactly such a point; an amortized model predicts the four tensors.
"""

from __future__ import annotations

import torch
from torch import Tensor

# the QP data, the problem protocol and the certificate live with the solver's reduced system (one module that
# both the solver and these families build on); they are re-exported here as do.problems.QPData, ...
from ..solvers.qp.problem import (
    QPData,
    QPProblem,
    QPStart,
    make_qp_data,
    not_psd,
    pack_start,
    qp_kkt_residual,
    take_qp_data,
    unpack_start,
)

__all__ = [
    "QPData",
    "QPStart",
    "QPProblem",
    "make_qp_data",
    "not_psd",
    "pack_start",
    "unpack_start",
    "qp_kkt_residual",
    "take_qp_data",
    "RandomQP",
    "PortfolioQP",
    "MPCQP",
]


class RandomQP(QPProblem):
    r"""Random feasible, bounded QPs (the OptNet / qpth benchmark distribution).

    ``Q = L L^T + eps I`` with Gaussian ``L``; ``G, A, q`` Gaussian; a point ``z0`` and slacks ``s0 > 0`` are
    drawn and ``b = A z0``, ``h = G z0 + s0``, so every instance is strictly feasible and (``Q`` positive
    definite) has a unique solution. ``shared_matrices=True`` shares ``Q, A, G`` across the batch (only
    ``q, b, h`` vary), as in a layer with fixed constraints.

    Example:
        >>> import doubleopt as do
        >>> fam = do.problems.RandomQP(n=10, m=20, p=3)
        >>> x = fam.sample(4, seed=0)
        >>> x.Q.shape, x.G.shape, x.A.shape
        (torch.Size([4, 10, 10]), torch.Size([4, 20, 10]), torch.Size([4, 3, 10]))
    """

    def __init__(self, n: int = 50, m: int = 100, p: int = 10, eps: float = 1e-1,
                 shared_matrices: bool = False, dtype: torch.dtype = torch.float64):
        super().__init__()
        if n < 1 or m < 0 or p < 0 or p > n:
            raise ValueError(f"need n >= 1, m >= 0, 0 <= p <= n; got n={n}, m={m}, p={p}")
        self.n, self.m, self.p, self.eps, self.shared, self.dtype = n, m, p, eps, shared_matrices, dtype
        self.dim = n

    def _sample(self, batch_size, generator):
        B, n, m, p = batch_size, self.n, self.m, self.p
        kw = {"generator": generator, "dtype": torch.float64}
        Bm = 1 if self.shared else B
        L = torch.randn(Bm, n, n, **kw)
        Q = L @ L.transpose(-1, -2) / n + self.eps * torch.eye(n, dtype=torch.float64)
        G = torch.randn(Bm, m, n, **kw)
        A = torch.randn(Bm, p, n, **kw)
        q = torch.randn(B, n, **kw)
        z0 = torch.randn(B, n, **kw)
        s0 = torch.rand(B, m, **kw) + 0.1
        if self.shared:
            Q, G, A = Q.expand(B, n, n), G.expand(B, m, n), A.expand(B, p, n)
        b = (A @ z0[..., None])[..., 0]
        h = (G @ z0[..., None])[..., 0] + s0
        t = {k: v.to(self.dtype) for k, v in dict(Q=Q, q=q, A=A, b=b, G=G, h=h).items()}
        return QPData(**t)


class PortfolioQP(QPProblem):
    r"""Parametric Markowitz portfolios: :math:`\min_w \gamma w^\top \Sigma w - \mu^\top w`
    s.t. :math:`\mathbf 1^\top w = 1,\ 0 \le w \le w_{\max}`.

    The covariance ``Sigma = F F^T + diag(d)`` (a factor model, seeded by ``model_seed``) and the bounds are
    shared; :meth:`sample` draws expected returns ``mu = mu_bar + sigma_mu * noise`` per instance. In QP
    form: ``Q = 2 gamma Sigma``, ``q = -mu``, ``A = 1^T``, ``b = 1``, ``G = [I; -I]``, ``h = [w_max 1; 0]``
    (``n`` variables, ``m = 2n`` inequalities, ``p = 1``). Use :meth:`returns` to read ``mu`` back.

    Warm starts: ``sol.state`` of a previous solve (``s``, ``lam``, ``nu``) plus ``sol.y`` form a
    :class:`QPStart`; ``data.with_start(QPStart(z, s, lam, nu))``.

    Example:
        >>> import doubleopt as do
        >>> fam = do.problems.PortfolioQP(n_assets=8)
        >>> x = fam.sample(16, seed=0)
        >>> w = do.solve(fam, do.solvers.QP(), x).y
        >>> bool(torch.allclose(w.sum(-1), torch.ones(16, dtype=w.dtype)))
        True
    """

    def __init__(self, n_assets: int = 20, n_factors: int = 3, gamma: float = 1.0, w_max: float = 0.3,
                 sigma_mu: float = 0.05, model_seed: int = 0, dtype: torch.dtype = torch.float64):
        super().__init__()
        if n_assets < 1 or w_max * n_assets < 1:
            raise ValueError(f"need n_assets >= 1 and w_max * n_assets >= 1, got {n_assets}, {w_max}")
        g = torch.Generator().manual_seed(model_seed)
        n = n_assets
        F = 0.2 * torch.randn(n, n_factors, generator=g, dtype=torch.float64)
        d = 0.01 + 0.04 * torch.rand(n, generator=g, dtype=torch.float64)
        Sigma = F @ F.T + torch.diag(d)
        mu_bar = 0.05 + 0.05 * torch.rand(n, generator=g, dtype=torch.float64)
        self.register_buffer("Q", (2 * gamma * Sigma).to(dtype))
        self.register_buffer("mu_bar", mu_bar.to(dtype))
        eye = torch.eye(n, dtype=dtype)
        self.register_buffer("G", torch.cat([eye, -eye]))
        upper = torch.full((n,), w_max, dtype=dtype)
        self.register_buffer("h", torch.cat([upper, torch.zeros(n, dtype=dtype)]))
        self.register_buffer("A", torch.ones(1, n, dtype=dtype))
        self.register_buffer("b", torch.ones(1, dtype=dtype))
        self.n, self.dim, self.sigma_mu, self.dtype = n, n, sigma_mu, dtype

    def context(self, mu: Tensor, start: QPStart | None = None) -> QPData:
        """The batch of QPs for expected returns ``mu`` ``(B, n)``."""
        return make_qp_data(self.Q, -mu, self.A, self.b, self.G, self.h, start=start)

    def returns(self, x: QPData) -> Tensor:
        """The expected returns ``mu`` ``(B, n)`` of a batch."""
        return -x.q

    def _sample(self, batch_size, generator):
        noise = torch.randn(batch_size, self.n, generator=generator, dtype=torch.float64).to(self.dtype)
        return self.context(self.mu_bar + self.sigma_mu * noise)


class MPCQP(QPProblem):
    r"""Linear model-predictive control: the QP of one MPC step, parametrized by the initial state ``x0``.

    .. math:: \min_{u, x}\ \sum_{t=0}^{T-1} r\,\|u_t\|^2 + w\,\|x_{t+1}\|^2 \quad \text{s.t.} \quad
       x_{t+1} = A x_t + B u_t,\ \ \|u_t\|_\infty \le u_{\max},\ \ \|x_{t+1}\|_\infty \le x_{\max},

    with :math:`x_0` given (the context). The system (seeded by ``model_seed``) is
    :math:`A = \rho\, e^{S}` with a random skew-symmetric :math:`S` (a lightly damped rotation of the state, so
    the uncontrolled system oscillates and does not decay fast) and a Gaussian :math:`B`; the input bound is
    tight, so the optimal inputs saturate for a state-dependent number of steps: the active set changes from
    instance to instance, which is what makes the family hard for an interior point started cold and a good
    test of warm starts. Initial states are drawn uniformly in the Euclidean ball of radius
    ``radius * x_max``; with :math:`\rho \le 1` the zero input keeps :math:`\|x_t\|_2 \le \|x_0\|_2`, so every
    instance is feasible.

    In QP form ``z = [u_0 .. u_{T-1}, x_1 .. x_T]`` (``n = T (n_u + n_x)``), ``Q = 2 diag(r, w)``, ``q = 0``,
    the dynamics are the ``p = T n_x`` equalities (``b = [A x0; 0; ...]``, the only data that vary) and the
    bounds are ``G = [I; -I]``, ``m = 2n``. :meth:`initial_states` reads ``x0`` back.

    Example:
        >>> import doubleopt as do
        >>> fam = do.problems.MPCQP(n_states=4, n_inputs=2, horizon=5)
        >>> x = fam.sample(8, seed=0)
        >>> (x.n, x.m, x.p), bool(do.solve(fam, do.solvers.QP(), x).successful.all())
        ((30, 60, 20), True)
    """

    def __init__(self, n_states: int = 6, n_inputs: int = 3, horizon: int = 10, u_max: float = 0.2,
                 x_max: float = 1.0, input_weight: float = 0.1, state_weight: float = 1.0, rho: float = 1.0,
                 radius: float = 1.0, model_seed: int = 0, dtype: torch.dtype = torch.float64):
        super().__init__()
        if min(n_states, n_inputs, horizon) < 1:
            raise ValueError(f"need n_states, n_inputs, horizon >= 1; got {n_states}, {n_inputs}, {horizon}")
        if not (0 < rho <= 1) or not (0 < radius <= 1):
            raise ValueError(f"need 0 < rho <= 1 and 0 < radius <= 1 (every instance feasible); got {rho}, {radius}")
        if not (u_max > 0 and x_max > 0 and input_weight > 0 and state_weight > 0):
            raise ValueError("u_max, x_max, input_weight and state_weight must be > 0")
        g = torch.Generator().manual_seed(model_seed)
        nx, nu, T = n_states, n_inputs, horizon
        S = torch.randn(nx, nx, generator=g, dtype=torch.float64)
        A = rho * torch.linalg.matrix_exp(0.3 * (S - S.T))
        Bm = torch.randn(nx, nu, generator=g, dtype=torch.float64) / nx**0.5
        n, p = T * (nu + nx), T * nx
        Aeq = torch.zeros(p, n, dtype=torch.float64)
        for t in range(T):
            rows = slice(t * nx, (t + 1) * nx)
            Aeq[rows, T * nu + t * nx:T * nu + (t + 1) * nx] = torch.eye(nx, dtype=torch.float64)
            Aeq[rows, t * nu:(t + 1) * nu] = -Bm
            if t > 0:
                Aeq[rows, T * nu + (t - 1) * nx:T * nu + t * nx] = -A
        weights = torch.cat([torch.full((T * nu,), input_weight), torch.full((T * nx,), state_weight)])
        bound = torch.cat([torch.full((T * nu,), u_max), torch.full((T * nx,), x_max)]).double()
        eye = torch.eye(n, dtype=torch.float64)
        self.register_buffer("system_A", A.to(dtype))
        self.register_buffer("system_B", Bm.to(dtype))
        self.register_buffer("Q", torch.diag(2 * weights).to(dtype))
        self.register_buffer("A", Aeq.to(dtype))
        self.register_buffer("G", torch.cat([eye, -eye]).to(dtype))
        self.register_buffer("h", torch.cat([bound, bound]).to(dtype))
        self.n_states, self.n_inputs, self.horizon = nx, nu, T
        self.x_max, self.radius, self.dtype = x_max, radius, dtype
        self.n = self.dim = n

    def context(self, x0: Tensor, start: QPStart | None = None) -> QPData:
        """The batch of MPC QPs for initial states ``x0`` ``(B, n_states)``."""
        if x0.dim() != 2 or x0.shape[-1] != self.n_states:
            raise ValueError(f"x0 must have shape (B, {self.n_states}), got {tuple(x0.shape)}")
        b = x0.new_zeros(x0.shape[0], self.A.shape[0])
        b[:, :self.n_states] = x0 @ self.system_A.T
        q = x0.new_zeros(x0.shape[0], self.n)
        return make_qp_data(self.Q, q, self.A, b, self.G, self.h, start=start)

    def initial_states(self, x: QPData) -> Tensor:
        """The initial states ``x0`` ``(B, n_states)`` of a batch."""
        return torch.linalg.solve(self.system_A, x.b[:, :self.n_states].T).T

    def _sample(self, batch_size, generator):
        nx = self.n_states
        d = torch.randn(batch_size, nx, generator=generator, dtype=torch.float64)
        r = torch.rand(batch_size, 1, generator=generator, dtype=torch.float64) ** (1.0 / nx)
        x0 = self.radius * self.x_max * r * d / d.norm(dim=-1, keepdim=True)
        return self.context(x0.to(self.dtype))
