r"""The resistor network as a core :class:`doubleopt.Problem`, so that any core solver relaxes the physics
and the core :class:`doubleopt.Implicit` adjoint differentiates the free state with respect to ``k``.

The problem is :math:`\min_{V_f} P(V_f; x, k) = \tfrac12 \sum_e k_e \Delta V_e^2 - \sum_{i \in src} I_i V_i`
with ``y = V_f`` ``(B, n_free)`` and the context ``x`` = the inputs ``(B, n_inputs)`` (source voltages, or
injected currents). Its Hessian is the reduced Laplacian :math:`L_{ff}(k)`; the implicit adjoint solves
:math:`L_{ff} v = \bar y` by CG on Hessian-vector products, i.e. exactly the adjoint method of
:func:`doubleopt.physical.exact_gradient`, here through autograd.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .._problem import Problem
from .._solve import solve
from ..adjoint import AbstractAdjoint, Implicit
from ..solvers import LBFGS, Solver
from ._network import ArrayLike, ResistorNetwork


class ResistorProblem(Problem):
    r"""Dissipated power of ``network`` over the free node voltages, batched over input samples.

    Args:
        network: a :class:`ResistorNetwork`.
        k: ``(E,)`` conductances as a tensor (default ``network.k``). Pass a tensor that requires grad (e.g.
            ``log_k.exp()``) to differentiate solutions with respect to it through ``do.Implicit()``.

    Example:
        >>> import torch, doubleopt as do
        >>> net = do.physical.random_network(40, n_inputs=2, n_outputs=1, seed=0)
        >>> prob = do.physical.ResistorProblem(net)
        >>> x = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
        >>> sol = do.solve(prob, do.LBFGS(), x, tol=1e-10, max_steps=2000)
        >>> V = prob.full_voltages(sol.y, x)
        >>> torch.allclose(V, net.free_state(x), atol=1e-8)
        True
    """

    def __init__(self, network: ResistorNetwork, k: Tensor | None = None):
        super().__init__()
        self.network = network
        self.dim = network.n_free
        if k is None:
            k = torch.from_numpy(network.k)
        elif not isinstance(k, Tensor):
            k = torch.as_tensor(network.check_k(k))
        else:
            network.check_k(k)  # refuses k <= 0 / non-finite / wrong shape with a clear message
        self.k = k
        order = np.concatenate([network.free, network.fixed])
        self._inv = torch.from_numpy(np.argsort(order))
        self._e0 = torch.from_numpy(network.edges[:, 0])
        self._e1 = torch.from_numpy(network.edges[:, 1])
        self._free = torch.from_numpy(network.free)
        self._src = torch.from_numpy(network.sources)

    def check_context(self, x) -> None:
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != self.network.n_inputs:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"x must be the inputs, a tensor of shape (B, {self.network.n_inputs}), got {shape}"
            )

    def full_voltages(self, y: Tensor, x: Tensor) -> Tensor:
        """All node voltages ``(B, n)`` from free voltages ``y`` and inputs ``x`` (differentiable)."""
        net = self.network
        B = y.shape[0]
        zeros = y.new_zeros(B, len(net.ground))
        VF = torch.cat([x.to(y.dtype), zeros], 1) if net.input_kind == "voltage" else zeros
        return torch.cat([y, VF], 1)[:, self._inv]

    def _terms(self, y: Tensor, x: Tensor):
        V = self.full_voltages(y, x)
        k = self.k.to(y.dtype)
        dV = V[:, self._e0] - V[:, self._e1]
        kdV = k * dV
        P = 0.5 * (kdV * dV).sum(-1)
        if self.network.input_kind == "current":
            P = P - (x.to(y.dtype) * V[:, self._src]).sum(-1)
        return V, kdV, P

    def objective(self, y: Tensor, x: Tensor) -> Tensor:
        return self._terms(y, x)[2]

    def smooth_value_and_grad(self, y: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        r"""Analytic gradient :math:`\nabla_{V_f} P = (D^\top k \odot \Delta V)_f - I_f` (torch ops)."""
        V, kdV, P = self._terms(y, x)
        g = V.new_zeros(V.shape).index_add(1, self._e0, kdV).index_add(1, self._e1, -kdV)
        if self.network.input_kind == "current":
            g = g.index_add(1, self._src, -x.to(y.dtype))
        return P, g[:, self._free]


def relax_free_state(
    network: ResistorNetwork,
    inputs: Tensor,
    k: Tensor | None = None,
    *,
    solver: Solver | None = None,
    adjoint: AbstractAdjoint | None = None,
    max_steps: int = 5000,
    tol: float | None = None,
    throw: bool = True,
) -> Tensor:
    """Free-state voltages ``(B, n)`` by relaxing :class:`ResistorProblem` with a core solver.

    Differentiable with respect to ``k`` and ``inputs`` through ``adjoint`` (default ``do.Implicit()``).

    Example:
        >>> import torch, doubleopt as do
        >>> net = do.physical.random_network(30, n_inputs=1, n_outputs=1, seed=1)
        >>> log_k = torch.zeros(net.n_edges, dtype=torch.float64, requires_grad=True)
        >>> x = torch.ones(2, 1, dtype=torch.float64)
        >>> V = do.physical.relax_free_state(net, x, log_k.exp(), tol=1e-10)
        >>> net.outputs(V).sum().backward()
        >>> log_k.grad.shape == (net.n_edges,)
        True
    """
    prob = ResistorProblem(network, k)
    x = torch.as_tensor(inputs)
    sol = solve(
        prob,
        LBFGS() if solver is None else solver,
        x,
        adjoint=Implicit() if adjoint is None else adjoint,
        max_steps=max_steps,
        tol=tol,
        throw=throw,
    )
    return prob.full_voltages(sol.y, x)


def autograd_cost(
    network: ResistorNetwork, inputs: Tensor, targets: ArrayLike, k: Tensor, **relax_kwargs
) -> Tensor:
    r"""The learning cost :math:`C(k)` as a differentiable scalar, through :func:`relax_free_state`."""
    V = relax_free_state(network, inputs, k, **relax_kwargs)
    t = torch.as_tensor(network._check_targets(targets, V.shape[0]), dtype=V.dtype)
    return 0.5 * ((network.outputs(V) - t) ** 2).sum(-1).mean()
