r"""A batched primal-dual interior-point QP solver (Mehrotra predictor-corrector) and its KKT adjoint.

Solves, for every instance of a batch,

.. math:: \min_z \tfrac12 z^\top Q z + q^\top z \quad \text{s.t.} \quad A z = b,\; G z + s = h,\; s \ge 0.

**Iteration.** With multipliers :math:`\lambda \ge 0` (inequalities) and :math:`\nu` (equalities), the
residuals are :math:`r_d = Qz + q + G^\top\lambda + A^\top\nu`, :math:`r_e = Az - b`, :math:`r_i = Gz + s - h`
and the complementarity :math:`s \circ \lambda`. A Newton step on the perturbed KKT conditions eliminates
:math:`ds = -r_i - G\,dz` and :math:`d\lambda = D G\,dz + S^{-1}(\Lambda r_i - r_c)`,
:math:`D = \Lambda S^{-1}`, leaving the reduced system

.. math:: (Q + G^\top D G)\, dz + A^\top d\nu = -r_d - G^\top S^{-1}(\Lambda r_i - r_c), \qquad A\, dz = -r_e,

solved, per iteration, with **one** factorization that the affine predictor (:math:`r_c = s\circ\lambda`),
the centering corrector (:math:`r_c = s\circ\lambda + ds_a \circ d\lambda_a - \sigma\mu`,
:math:`\sigma = (\mu_a/\mu)^3`) and the backward pass all reuse. Two ways to handle the equalities:

* **null space** (default for a full-row-rank ``A``, ``p < n``): once per solve, ``A^T = Y R`` (complete QR,
  ``U = [Y | N]`` orthogonal, ``A N = 0``); ``G N``, ``G Y``, ``N^T Q N`` are precomputed, and each iteration
  factors only the ``(n-p) x (n-p)`` matrix :math:`N^\top (Q + G^\top D G) N + \delta I`. The equality
  multipliers are the least-squares ones, :math:`\nu = -R^{-1} Y^\top (Qz + q + G^\top\lambda)`.
* **Schur complement** (rank-deficient ``A``, ``do.Unroll()`` through ``A``, or ``QP(equality="schur")``):
  :math:`L L^\top = H = Q + G^\top D G + \delta I` and :math:`M = A H^{-1} A^\top + \delta I`.

The tiny shift :math:`\delta` (``eps^{3/4}`` relative) only perturbs the Newton direction, not the fixed
point (residuals are evaluated exactly), and makes singular ``Q`` (linear programs) and rank-deficient ``A``
work. One step of iterative refinement of the corrector against the unreduced operator (products with
``Q, G``, not the formed, ill-conditioned ``H``) keeps the dual residual decreasing once :math:`\mu` is tiny.
Steps keep ``s, lambda > 0`` (fraction to the boundary 0.99). With no inequalities one Newton step is exact;
with no constraints it is a Cholesky solve.

**Cost.** Per iteration: one batched GEMM for :math:`G^\top D G` (one plain GEMM when ``G`` is shared; over
half the rows when a shared ``G`` has two-sided rows :math:`g_j = -g_i`, e.g. box bounds, whose terms merge), one
batched Cholesky, a few triangular solves and about eight matrix-vector products with ``G``; one host
synchronization for the factorization check, one for the divergence test, one for the active set.
Instances that have converged are not recomputed: once fewer than 85% of the batch is unfinished the solve
loop gathers the rest into a smaller batch (:meth:`QP.take_context` carries the per-solve constants along);
under autograd, :func:`qp_solve`'s ``skip_tol = tol`` makes each step gather its active instances instead.

**Polish finish.** With ``skip_tol`` (:func:`qp_solve`), an instance whose residual is below ``polish_below``
(1e-6) gets an active-set polish (:meth:`QP.polish`: the equality-constrained QP on the guessed active set,
solved with one factorization of the same reduced matrix at :math:`D = 1_{\mathcal A}/\sqrt{\epsilon}`);
the polished point is kept only where its exact KKT residual passes ``tol``. The last interior-point
iterations (where :math:`\mu` shrinks from 1e-6 to 1e-12) become one polish; the KKT backward then runs
on the polish's factorization, the exact one for the active set.

**float32.** :func:`qp_solve` and :class:`~doubleopt.layers.QPLayer` run the interior point in float64
for float32 inputs by default and cast the solution (and gradients) back; natively in float32
(``compute_dtype=torch.float32``) the iteration stalls near a KKT residual of 1e-4 (``lambda / s`` spans
more than float32 can factor) and solutions are good to about 1e-3..1e-2.

**Stopping.** ``stationarity`` is the scaled KKT residual
:math:`\max(\|r_d\|_\infty/(1+\|q\|_\infty), \|r_e\|_\infty/(1+\|b\|_\infty), \|r_i\|_\infty/(1+\|h\|_\infty),
\mu)` with :math:`\mu = s^\top\lambda / m`, compared with ``tol`` by the one :func:`~doubleopt.solve` loop.

**Infeasibility / unboundedness** (per instance, from the iterates as they diverge):
a primal infeasibility certificate is a ray :math:`y=(\lambda,\nu)`, :math:`\lambda\ge0`, with
:math:`G^\top\lambda + A^\top\nu \approx 0` and :math:`h^\top\lambda + b^\top\nu < 0` (Farkas); a dual
infeasibility (unboundedness) certificate is a direction :math:`d` with :math:`Qd \approx 0`,
:math:`Ad \approx 0`, :math:`Gd \le 0`, :math:`q^\top d < 0`. Both are tested on the normalized iterates
(OSQP-style, Banjac et al. 2019) once their norm exceeds ``divergence``; the instance stops with
``RESULTS.infeasible`` / ``RESULTS.unbounded``.

**Differentiation** (Amos & Kolter 2017, OptNet). At the solution, differentiating
:math:`Qz + q + G^\top\lambda + A^\top\nu = 0`, :math:`\Lambda(Gz - h) = 0`, :math:`Az = b` gives, for an
incoming gradient :math:`\bar z`, the adjoint system :math:`H w_z + A^\top w_\nu = -\bar z`,
:math:`A w_z = 0` with the same :math:`H` (so the forward factorization is reused; active constraints
have :math:`D \to \infty`; in null-space mode the same elimination, :math:`w_z = N u`), :math:`\hat w = D G w_z`,
and

.. math:: \nabla_q = w_z,\ \nabla_b = -w_\nu,\ \nabla_h = -\hat w,\
   \nabla_Q = \tfrac12(w_z z^\top + z w_z^\top),\ \nabla_A = \nu w_z^\top + w_\nu z^\top,\
   \nabla_G = \lambda w_z^\top + \hat w z^\top.

Layout, each module building only on those before it: :mod:`.reduced_system` (the per-solve constants
:class:`~.reduced_system.QPConstants`, null space, the reduced matrix, its factorization and solves, the cold
start, dtype guards), :mod:`.kkt_backward` (the OptNet adjoint), :mod:`.problem` (the data, ``QPProblem`` with
its cold start and KKT hook, the KKT certificate; re-exported by :mod:`doubleopt.problems.qp`),
:mod:`.interior_point` (the solver and its state), :mod:`.weakly_active` (ambiguous active sets),
:mod:`.api` (:func:`qp_solve`).

**Weakly active constraints.** Where a converged instance has a constraint whose slack and multiplier are both
small and not separated, its active set (and so the KKT derivative) is ambiguous at ``tol``; :func:`qp_solve`
re-solves those instances tighter and marks, per instance, the degenerate ones where the solution is not
differentiable (:mod:`.weakly_active`).

``do.Implicit()`` uses it through :meth:`~doubleopt.problems.QPProblem.implicit_solution` (the same
implicit-function theorem as for unconstrained problems, applied to the KKT map instead of
:math:`\nabla f`); ``do.Unroll()`` backpropagates through the interior-point iterations instead.

References:
    Mehrotra, "On the implementation of a primal-dual interior point method", SIAM J. Optim. 1992.
    Amos & Kolter, "OptNet: Differentiable optimization as a layer in neural networks", ICML 2017.
    Vandenberghe, "The CVXOPT linear and quadratic cone program solvers", 2010 (initial point).
    Banjac et al., "Infeasibility detection in the alternating direction method of multipliers for
    convex optimization", JOTA 2019.
"""

from .api import QP_DEFAULT_TOL, qp_solve
from .interior_point import QP, QPState
from .kkt_backward import kkt_adjoint_solve, qp_kkt_differentiable
from .problem import take_qp_data
from .reduced_system import QPConstants, QPGuards, qp_guards

__all__ = [
    "QP",
    "QPState",
    "qp_solve",
    "QP_DEFAULT_TOL",
    "qp_kkt_differentiable",
    "kkt_adjoint_solve",
    "QPConstants",
    "QPGuards",
    "qp_guards",
    "take_qp_data",
]
