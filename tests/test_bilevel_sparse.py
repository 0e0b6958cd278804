"""Problem 3 of the bilevel issue: sparse logistic regression with one L2 weight per feature."""

import pytest
import torch

import doubleopt as do
from doubleopt.bilevel.sparse_logistic import FeatureMatrix, SparseLogisticData, SparseLogisticL2, sparse_logistic_split

torch.set_num_threads(1)
F64 = torch.float64


def _small(layout="sparse", seed=0):
    return sparse_logistic_split(40, 60, 50, density=0.2, n_informative=6, seed=seed, layout=layout)


def _val_loss(prob, train, val):
    with torch.no_grad():
        sol = do.solve(prob, do.LBFGS(), train, tol=1e-13, max_steps=3000)
        return float(prob.logistic_loss(sol.y, val))


@pytest.mark.parametrize("layout", ["sparse", "dense"])
def test_hypergradient_matches_central_finite_differences(layout):
    train, val, _ = _small(layout)
    prob = SparseLogisticL2(40, log_l2=-3.0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        prob.log_l2.add_(torch.randn(40, generator=g, dtype=F64))
    sol = do.solve(prob, do.LBFGS(), train, tol=1e-13, max_steps=3000, adjoint=do.Implicit(do.CG(rtol=1e-13)))
    prob.logistic_loss(sol.y, val).backward()
    hg = prob.log_l2.grad.clone()
    assert hg.shape == (40,) and hg.abs().max() > 1e-4
    base, eps = prob.log_l2.detach().clone(), 1e-4
    fd = torch.zeros(40, dtype=F64)
    for i in range(40):
        vals = []
        for s in (1, -1):
            with torch.no_grad():
                prob.log_l2.copy_(base)
                prob.log_l2[i] += s * eps
            vals.append(_val_loss(prob, train, val))
        fd[i] = (vals[0] - vals[1]) / (2 * eps)
    # normwise: FD's own noise (inner tol 1e-13 / eps) is ~1e-9 absolute, so tiny components are not compared alone
    assert float((hg - fd).norm()) <= 1e-6 * float(fd.norm()), float((hg - fd).norm() / fd.norm())


def test_single_global_weight_hypergradient_matches_finite_differences():
    train, val, _ = _small()
    prob = SparseLogisticL2(40, per_feature=False, log_l2=-2.0)
    sol = do.solve(prob, do.LBFGS(), train, tol=1e-13, max_steps=3000, adjoint=do.Implicit(do.Cholesky()))
    prob.logistic_loss(sol.y, val).backward()
    hg = float(prob.log_l2.grad[0])
    eps, vals = 1e-4, []
    for s in (1, -1):
        with torch.no_grad():
            prob.log_l2.fill_(-2.0 + s * eps)
        vals.append(_val_loss(prob, train, val))
    assert hg == pytest.approx((vals[0] - vals[1]) / (2 * eps), rel=1e-6)


def test_analytic_gradient_and_hvp_match_autograd_and_explicit_hessian():
    train, _, _ = _small()
    prob = SparseLogisticL2(40, log_l2=-1.0)
    g = torch.Generator().manual_seed(2)
    y = torch.randn(1, 40, generator=g, dtype=F64)
    f, grad = prob.smooth_value_and_grad(y, train)
    f_ref, grad_ref = do.Problem.smooth_value_and_grad(prob, y, train)
    torch.testing.assert_close(f, f_ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-14)
    # Hessian = A^T diag(s(1-s)) A / N + diag(e^lam), through the stored-transpose product
    A = train.features.to_dense()[0]
    s = torch.sigmoid(A @ y[0])
    H = A.T @ ((s * (1 - s))[:, None] * A) / A.shape[0] + torch.diag(prob.log_l2.detach().exp())
    v = torch.randn(1, 40, generator=g, dtype=F64)
    yv = y.clone().requires_grad_(True)
    (hv,) = torch.autograd.grad(prob.smooth_value_and_grad(yv, train)[1], yv, v)
    torch.testing.assert_close(hv[0], H @ v[0], rtol=1e-10, atol=1e-14)


def test_layouts_agree_and_batch_is_block_diagonal():
    (tr_s, _, w_s), (tr_d, _, w_d) = _small("sparse"), _small("dense")
    torch.testing.assert_close(w_s, w_d, rtol=0, atol=0)
    # duplicate columns in a row are summed in a different order by the two layouts
    torch.testing.assert_close(tr_s.features.to_dense(), tr_d.features.to_dense(), rtol=1e-15, atol=1e-15)
    # two instances in one batch give the products of each instance alone
    X = torch.cat([tr_s.features.to_dense(), _small(seed=3)[0].features.to_dense()])
    w = torch.randn(2, 40, generator=torch.Generator().manual_seed(4), dtype=F64)
    r = torch.randn(2, 60, generator=torch.Generator().manual_seed(5), dtype=F64)
    for layout in ("sparse", "dense"):
        fm = FeatureMatrix.from_dense(X, layout)
        torch.testing.assert_close(fm.matvec(w), torch.einsum("bnd,bd->bn", X, w), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(fm.rmatvec(r), torch.einsum("bnd,bn->bd", X, r), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(fm.to_dense(), X, rtol=0, atol=0)
    labels = torch.cat([tr_s.labels, _small(seed=3)[0].labels])
    prob = SparseLogisticL2(40, log_l2=-2.0)
    sol = do.solve(prob, do.LBFGS(), SparseLogisticData(labels, FeatureMatrix.from_dense(X)), tol=1e-10)
    alone = do.solve(prob, do.LBFGS(), tr_s, tol=1e-10)
    assert sol.y.shape == (2, 40)
    torch.testing.assert_close(sol.y[0], alone.y[0], rtol=1e-6, atol=1e-8)


def test_data_is_seeded_and_shaped():
    a = sparse_logistic_split(300, 20, 10, density=0.05, n_informative=7, seed=5)[::2]
    b = sparse_logistic_split(300, 20, 10, density=0.05, n_informative=7, seed=5)[::2]
    c = sparse_logistic_split(300, 20, 10, density=0.05, n_informative=7, seed=6)[2]
    torch.testing.assert_close(a[0].features.to_dense(), b[0].features.to_dense(), rtol=0, atol=0)
    torch.testing.assert_close(a[0].labels, b[0].labels, rtol=0, atol=0)
    assert int((a[1] != 0).sum()) == 7 and not torch.equal(a[1], c)
    train, val, _ = sparse_logistic_split(300, 20, 10, density=0.05, n_informative=7, seed=5)
    assert train.features.shape == (1, 20, 300) and val.features.shape == (1, 10, 300)
    assert train.labels.shape == (1, 20) and set(train.labels.unique().tolist()) <= {0.0, 1.0}
    assert 0 < train.features.nnz() <= 20 * 15  # 15 entries per row, duplicates summed
    prob = SparseLogisticL2(300, per_feature=False)
    assert prob.dim == 300 and prob.log_l2.shape == (1,)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_features": 0}, "n_features"),
        ({"n_train": 0}, "n_train"),
        ({"n_val": 2.5}, "n_val"),
        ({"density": 0.0}, "density"),
        ({"density": 1.5}, "density"),
        ({"n_informative": 0}, "n_informative"),
        ({"n_informative": 101}, "n_informative"),
        ({"noise": -1.0}, "noise"),
        ({"layout": "csc"}, "layout"),
    ],
)
def test_data_bad_arguments(kwargs, match):
    base = {"n_features": 100, "n_train": 10, "n_val": 10, "n_informative": 5}
    with pytest.raises(ValueError, match=match):
        sparse_logistic_split(**{**base, **kwargs})


def test_bad_problem_and_context_raise():
    train, _, _ = _small()
    with pytest.raises(ValueError, match="n_features"):
        SparseLogisticL2(0)
    with pytest.raises(ValueError, match="log_l2"):
        SparseLogisticL2(10, log_l2=float("inf"))
    prob = SparseLogisticL2(40)
    with pytest.raises(ValueError, match="SparseLogisticData"):
        do.solve(prob, do.LBFGS(), torch.zeros(1, 40, dtype=F64))
    with pytest.raises(ValueError, match="n_features=39"):
        do.solve(SparseLogisticL2(39), do.LBFGS(), train)
    with pytest.raises(ValueError, match="labels must have shape"):
        do.solve(prob, do.LBFGS(), SparseLogisticData(train.labels[:, :5], train.features))
    with pytest.raises(ValueError, match="0 or 1"):
        do.solve(prob, do.LBFGS(), SparseLogisticData(2 * train.labels - 1, train.features))
    with pytest.raises(ValueError, match="dtype"):
        do.solve(SparseLogisticL2(40, dtype=torch.float32), do.LBFGS(), train)
    with pytest.raises(ValueError, match="FeatureMatrix"):
        do.solve(prob, do.LBFGS(), SparseLogisticData(train.labels, train.features.to_dense()))
    idx = torch.tensor([[0], [0], [40]])
    with pytest.raises(ValueError, match="out of range"):
        FeatureMatrix(idx, torch.ones(1, dtype=F64), (1, 2, 40))
    with pytest.raises(ValueError, match="layout"):
        FeatureMatrix(idx[:, :0], torch.ones(0, dtype=F64), (1, 2, 40), layout="coo")
    with pytest.raises(ValueError, match="shape"):
        FeatureMatrix(idx[:, :0], torch.ones(0, dtype=F64), (1, 0, 40))
    with pytest.raises(ValueError, match="floating"):
        FeatureMatrix(idx[:, :0], torch.ones(0, dtype=torch.int64), (1, 2, 40))
    with pytest.raises(ValueError, match="B, N, d"):
        FeatureMatrix.from_dense(torch.ones(2, 40, dtype=F64))
