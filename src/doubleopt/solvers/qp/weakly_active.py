r"""Weakly active constraints: where a converged QP's active set, and so its gradient, is ambiguous.

At a solution each inequality has a slack :math:`s_j \ge 0` and a multiplier :math:`\lambda_j \ge 0` with
:math:`s_j \lambda_j = 0`. The KKT backward (:mod:`.kkt_backward`) treats a constraint as active where
:math:`d_j = \lambda_j / s_j` is large and as inactive where it is small, and the derivative of the solution is
that of the equality-constrained QP on the active set. An interior point stops with :math:`s_j \lambda_j
\approx \mu \le` ``tol``, so a constraint with a *small* multiplier (``lam* = 2e-5`` while the others are
``1e-2``) can stop with ``s_j`` and ``lam_j`` of the same size (``6.8e-5`` and ``3.5e-5`` at the default
``tol = 1e-10``): the solution is ``sqrt(tol)``-accurate, but :math:`d_j \approx 2` weights the constraint half
in, half out, and the gradient can be wrong by 20% or more (seed 4, instance 63 of the ``B = 128, n = 50,
m = 100, p = 10`` benchmark distribution, :class:`~doubleopt.problems.RandomQP`).

A pair is **ambiguous** when it is not separated: :math:`\max(s_j, \lambda_j) < \text{separation} \cdot
\min(s_j, \lambda_j)` (``separation = 1e3``; a converged pair of a strictly complementary solution is separated by
:math:`\max^2/\mu`, ``1e8`` at the default tolerance, and a polished one exactly), or when both are zero to
working accuracy (:math:`s_j \le \theta (1 + \|h\|_\infty)` and :math:`\lambda_j \le \theta \max(1,
\|\lambda\|_\infty)`, :math:`\theta = \sqrt{\epsilon}`: a *degenerate* constraint, active with a zero multiplier).

:func:`~doubleopt.solvers.qp.qp_solve` re-solves the instances with an ambiguous pair at a tighter tolerance
(the interior point goes on until the pair separates and the active-set polish lands on the exact solution) and
reports, per instance, the ones that stay ambiguous: at a degenerate constraint the solution is not
differentiable (the derivatives from the two sides differ, as for :math:`\max(0, t)` at 0) and the gradient
returned is one of the one-sided derivatives (the polish decides the pair one way: ``d_j = 0`` or
``1 / sqrt(eps)``), or a blend of them where the interior point stopped with the pair unseparated.
"""

from __future__ import annotations

import torch
from torch import Tensor

SEPARATION = 1e3
"""A complementarity pair is separated when the larger of ``s_j, lam_j`` is at least this times the smaller."""

WEAKLY_ACTIVE_NOTE = ("weakly active constraints (slack and multiplier both near 0): the solution is not "
                      "differentiable there; the gradient is one of several one-sided derivatives (a blend of "
                      "them where the interior point could not separate slack and multiplier)")
"""What ``Solution.stats["weakly_active_note"]`` says about the instances marked in ``stats["weakly_active"]``."""


def ambiguous_pairs(s: Tensor, lam: Tensor, h: Tensor, separation: float = SEPARATION) -> Tensor:
    r"""``(B, m)`` bool: the complementarity pairs ``(s_j, lam_j)`` that do not say whether constraint ``j`` is
    active (see the module docstring): not separated by ``separation``, or both zero to working accuracy.

    Example:
        >>> s = torch.tensor([[1e-10, 0.5, 6.8e-5, 0.0]], dtype=torch.float64)
        >>> lam = torch.tensor([[1e-2, 1e-11, 3.5e-5, 0.0]], dtype=torch.float64)
        >>> ambiguous_pairs(s, lam, torch.ones(1, 4, dtype=torch.float64)).tolist()
        [[False, False, True, True]]
    """
    if s.shape[-1] == 0:
        return s.new_zeros(s.shape, dtype=torch.bool)
    s, lam = s.detach().clamp_min(0), lam.detach().clamp_min(0)
    fi = torch.finfo(s.dtype)
    small, big = torch.minimum(s, lam), torch.maximum(s, lam)
    unseparated = big < separation * small
    theta = float(fi.eps) ** 0.5
    s_scale = 1 + h.detach().abs().amax(-1, keepdim=True)
    lam_scale = lam.amax(-1, keepdim=True).clamp_min(1.0)
    both_zero = (s <= theta * s_scale) & (lam <= theta * lam_scale)
    return unseparated | both_zero


def weakly_active(s: Tensor, lam: Tensor, h: Tensor, separation: float = SEPARATION) -> Tensor:
    """``(B,)`` bool: instances with at least one ambiguous pair (:func:`ambiguous_pairs`)."""
    return ambiguous_pairs(s, lam, h, separation).any(-1)
