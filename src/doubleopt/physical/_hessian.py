r"""Hessians of the two landscapes of physical learning.

* The **physical** Hessian, of the dissipated power with respect to the free node voltages:
  :math:`\nabla^2_{V_f} P = L_{ff}(k)` (constant in :math:`V`: the power is quadratic).
* The **learning** Hessian, of the cost with respect to the conductances:
  :math:`\nabla^2_k C = \overline{J^\top J} + \overline{\textstyle\sum_j r_j \nabla^2_k O_j}`, with the
  output Jacobian :math:`J_b = \partial O_b/\partial k = -(\Delta Z)^\top \operatorname{diag}(\Delta V_b)`
  (``m x E``).
  :func:`learning_hessian` gives the Gauss-Newton part or the exact Hessian (adjoint formulas; autograd
  through a dense solve for verification).

The "double optimization" relation (Stern et al. 2025; Guzman et al. 2024) links them: *soft physical
modes become stiff learning directions*. :func:`mode_alignment` makes it testable. Each physical mode
:math:`u_i` (eigenpair :math:`L_{ff} u_i = \lambda_i u_i`) defines the conductance direction that changes
its stiffness, :math:`\partial \lambda_i / \partial k_e = (\Delta u_{i,e})^2 =: w_{i,e}` (first-order
perturbation theory). The stiffness of the learning landscape along it is the Rayleigh quotient
:math:`q_i = w_i^\top H_C w_i / w_i^\top w_i`. The relation holds if :math:`q_i` decreases with
:math:`\lambda_i` (negative rank correlation; large soft/stiff ratio of :math:`q`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ._network import ArrayLike, ResistorNetwork


def physical_hessian(net: ResistorNetwork, k: ArrayLike | None = None) -> np.ndarray:
    """Dense physical Hessian :math:`L_{ff}(k)` ``(n_free, n_free)`` (sparse: ``net.laplacian(k)``)."""
    return net.laplacian(k).toarray()


def output_jacobian(net: ResistorNetwork, inputs: ArrayLike, k: ArrayLike | None = None) -> np.ndarray:
    r"""Output Jacobians :math:`J_b = \partial O_b / \partial k`, ``(B, m, E)``, by the sparse adjoint."""
    f = net.factorize(k)
    st = f.free(inputs)
    return -(f.dZ.T[None, :, :] * st.dV[:, None, :])


def _dense_cost(net: ResistorNetwork, x: Tensor, t: Tensor):
    """``k -> C(k)`` through a dense, twice-differentiable torch solve (small networks only)."""
    rows = torch.from_numpy(net._L_indices[net._L_inv].astype(np.int64))
    colptr = net._L_indptr
    col_of = np.repeat(np.arange(net.n_free), np.diff(colptr))
    cols = torch.from_numpy(col_of[net._L_inv].astype(np.int64))
    eid, sgn = torch.from_numpy(net._L_eid), torch.from_numpy(net._L_sgn)
    bf, bF, bid = (torch.from_numpy(a) for a in (net._bnd_free, net._bnd_fixed, net._bnd))
    nf = net.n_free
    inv = torch.from_numpy(np.argsort(np.concatenate([net.free, net.fixed])))
    B = x.shape[0]
    if net.input_kind == "voltage":
        VF = torch.cat([x, x.new_zeros(B, len(net.ground))], 1)
    else:
        VF = x.new_zeros(B, len(net.ground))

    def cost(k: Tensor) -> Tensor:
        L = k.new_zeros(nf, nf).index_put((rows, cols), sgn * k[eid], accumulate=True)
        if net.input_kind == "voltage":
            rhs = k.new_zeros(nf, B).index_put((bf,), k[bid, None] * VF[:, bF].T, accumulate=True)
        else:
            rhs = k.new_zeros(nf, B).index_put(
                (torch.from_numpy(net._pos[net.sources]),), x.T, accumulate=True
            )
        Vf = torch.linalg.solve(L, rhs).T
        V = torch.cat([Vf, VF], 1)[:, inv]
        return 0.5 * ((net.outputs(V) - t) ** 2).sum(-1).mean()

    return cost


def learning_hessian(
    net: ResistorNetwork,
    inputs: ArrayLike,
    targets: ArrayLike,
    k: ArrayLike | None = None,
    method: str = "gauss_newton",
) -> np.ndarray:
    r"""Hessian of the cost with respect to the conductances, ``(E, E)``.

    With :math:`G = D_f L_{ff}^{-1} D_f^\top` (the ``E x E`` edge Green's function), the adjoint state
    :math:`\lambda_b = L_{ff}^{-1} M_f^\top r_b` and differentiating
    :math:`\partial V_f / \partial k_e = -L_{ff}^{-1} d_e \Delta V_e` once more,

    .. math:: \nabla^2_k C = \overline{J^\top J}
       + \overline{G \odot (\Delta V\, \Delta\lambda^\top + \Delta\lambda\, \Delta V^\top)} .

    Args:
        method: ``"gauss_newton"`` (:math:`\overline{J^\top J}` only, exact when the residuals vanish; needs
            ``m`` extra solves), ``"exact"`` (the formula above, ``E`` extra sparse solves, dense ``E x E``
            result) or ``"autograd"`` (``torch.autograd.functional.hessian`` through a dense differentiable
            solve; slow, for verification on tiny networks).

    Example:
        >>> import torch, doubleopt as do
        >>> net = do.physical.random_network(20, n_inputs=2, n_outputs=1, seed=0)
        >>> x = torch.rand(4, 2, dtype=torch.float64); t = torch.zeros(4, 1, dtype=torch.float64)
        >>> H = do.physical.learning_hessian(net, x, t, method="exact")
        >>> A = do.physical.learning_hessian(net, x, t, method="autograd")
        >>> bool(abs(H - A).max() < 1e-10 * abs(A).max())
        True
    """
    kk = net._k(k)
    x = net._check_inputs(inputs)
    t = net._check_targets(targets, x.shape[0])
    if method in ("gauss_newton", "exact"):
        f = net.factorize(kk)
        st = f.free(x, t)
        J = -(f.dZ.T[None, :, :] * st.dV[:, None, :])  # (B, m, E)
        Jf = J.reshape(-1, J.shape[-1])
        H = Jf.T @ Jf / x.shape[0]
        if method == "exact":
            Df = net._Df
            G = np.asarray(Df @ f.solve(Df.T.toarray()))  # (E, E)
            dlam = st.residual @ f.dZ.T  # (B, E): drops of the adjoint state
            A = st.dV.T @ dlam / x.shape[0]  # mean_b dV_e dlam_g
            H = H + G * (A + A.T)
        return 0.5 * (H + H.T)
    if method == "autograd":
        if net.n_edges > 400:
            raise ValueError(
                f"method='autograd' is for tiny networks (E <= 400), this one has {net.n_edges} edges"
            )
        fn = _dense_cost(net, torch.from_numpy(x), torch.from_numpy(t))
        H = torch.autograd.functional.hessian(fn, torch.from_numpy(kk.copy()), vectorize=True)
        return (0.5 * (H + H.T)).numpy()
    raise ValueError(f"method must be 'gauss_newton', 'exact' or 'autograd', got {method!r}")


@dataclass
class ModeAlignment:
    """Outcome of :func:`mode_alignment` (see the module docstring).

    Attributes:
        phys_eigvals: ``(n_free,)`` eigenvalues of :math:`L_{ff}`, ascending.
        q: ``(n_free,)`` learning stiffness along each mode's conductance direction.
        spearman: rank correlation of ``phys_eigvals`` and ``q`` (negative: soft modes are stiff to learning).
        soft_stiff_ratio: mean ``q`` of the softest decile of modes / mean ``q`` of the stiffest decile.
        shuffled_spearman: the same correlation with edges permuted in ``w_i`` (a control, ~0 if meaningful).
    """

    phys_eigvals: np.ndarray
    q: np.ndarray
    spearman: float
    soft_stiff_ratio: float
    shuffled_spearman: float


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def mode_alignment(
    net: ResistorNetwork, H_learn: np.ndarray, k: ArrayLike | None = None, seed: int = 0
) -> ModeAlignment:
    """Test "soft physical modes become stiff learning directions" at conductances ``k`` (dense eigh)."""
    kk = net._k(k)
    lam, U = np.linalg.eigh(physical_hessian(net, kk))
    Ufull = np.zeros((net.n_nodes, len(lam)))
    Ufull[net.free] = U
    W = (Ufull[net.edges[:, 0]] - Ufull[net.edges[:, 1]]) ** 2  # (E, modes): d lambda_i / d k_e
    q = np.einsum("ei,ef,fi->i", W, H_learn, W) / (W * W).sum(0)
    Ws = W[np.random.default_rng(seed).permutation(len(W))]
    qs = np.einsum("ei,ef,fi->i", Ws, H_learn, Ws) / (Ws * Ws).sum(0)
    d = max(1, len(lam) // 10)
    return ModeAlignment(lam, q, _spearman(lam, q), float(q[:d].mean() / q[-d:].mean()), _spearman(lam, qs))
