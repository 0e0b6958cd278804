"""QPLayer: parameters, inputs, gradients, result codes."""

import pytest
import torch

import doubleopt as do

F64 = torch.float64


def test_layer_learns_and_matches_functional():
    g = torch.Generator().manual_seed(0)
    n, m, p = 5, 7, 2
    x = do.problems.RandomQP(n=n, m=m, p=p, shared_matrices=True).sample(4, seed=0)
    layer = do.layers.QPLayer(Q=x.Q[0], A=x.A[0], b=x.b[0], G=x.G[0], h=x.h[0], learnable=("A", "G", "h"))
    q = torch.randn(4, n, generator=g, dtype=F64, requires_grad=True)
    z = layer(q=q)
    ref = do.qp_solve(x.Q[0], q.detach(), x.A[0], x.b[0], x.G[0], x.h[0])
    torch.testing.assert_close(z, ref.y)
    z.pow(2).sum().backward()
    for t in (q, layer.A, layer.G, layer.h):
        assert t.grad is not None and torch.isfinite(t.grad).all()
    assert layer.b.grad is None if isinstance(layer.b, torch.nn.Parameter) else True
    assert "A" in repr(layer)
    # the same gradient through the unrolled iterations
    layer_u = do.layers.QPLayer(
        Q=x.Q[0],
        A=x.A[0],
        b=x.b[0],
        G=x.G[0],
        h=x.h[0],
        learnable=("G",),
        adjoint=do.Unroll(),
        tol=1e-11,
        max_steps=100,
    )
    layer_i = do.layers.QPLayer(
        Q=x.Q[0], A=x.A[0], b=x.b[0], G=x.G[0], h=x.h[0], learnable=("G",), tol=1e-11, max_steps=100
    )
    for lay in (layer_u, layer_i):
        lay(q=q.detach()).pow(2).sum().backward()
    torch.testing.assert_close(layer_u.G.grad, layer_i.G.grad, atol=1e-6, rtol=1e-5)


def test_layer_reports_failures_per_instance():
    layer = do.layers.QPLayer(Q=torch.eye(1, dtype=F64), G=torch.tensor([[1.0], [-1.0]], dtype=F64))
    h = torch.tensor([[1.0, 1.0], [-1.0, -1.0]], dtype=F64)  # second instance: z <= -1 and z >= 1
    z = layer(q=torch.zeros(2, 1, dtype=F64), h=h)
    assert layer.last_solution.result.tolist() == [do.RESULTS.successful, do.RESULTS.infeasible]
    assert torch.isfinite(z).all()
    strict = do.layers.QPLayer(
        Q=torch.eye(1, dtype=F64), G=torch.tensor([[1.0], [-1.0]], dtype=F64), throw=True
    )
    with pytest.raises(do.SolveError, match="infeasible"):
        strict(q=torch.zeros(2, 1, dtype=F64), h=h)


def test_layer_bad_arguments():
    with pytest.raises(ValueError, match="learnable names"):
        do.layers.QPLayer(Q=torch.eye(2), q=torch.zeros(2), learnable=("X",))
    with pytest.raises(ValueError, match="no initial value"):
        do.layers.QPLayer(Q=torch.eye(2), learnable=("G",))
    layer = do.layers.QPLayer(Q=torch.eye(2, dtype=F64))
    with pytest.raises(ValueError, match="inputs must be among"):
        layer(p=torch.zeros(2))
    with pytest.raises(ValueError, match="needs Q and q"):
        layer()
