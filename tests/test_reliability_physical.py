"""Reliability of doubleopt.physical (issue 18, "Found"): bad strengths, conductances outside the learning range,
the type policy and signature of learning_step, and train's argument checks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import doubleopt.physical as ph

f64 = torch.float64


@pytest.fixture(scope="module")
def net():
    return ph.random_network(40, n_inputs=2, n_outputs=2, seed=0, k_init="uniform")


def _data(net, B=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, net.n_inputs, dtype=f64, generator=g)
    return x, 0.4 * torch.rand(B, net.n_outputs, dtype=f64, generator=g)


# ---- clamped / nudged strengths -------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0.0, -0.2, float("nan"), float("inf"), 1.5, "0.1", None])
def test_clamped_state_refuses_bad_eta(net, bad):
    x, t = _data(net)
    with pytest.raises(ValueError, match="eta"):
        net.clamped_state(x, t, bad)


@pytest.mark.parametrize("bad", [0.0, -0.2, float("nan"), float("inf"), None])
def test_nudged_state_refuses_bad_beta(net, bad):
    x, t = _data(net)
    with pytest.raises(ValueError, match="beta"):
        net.nudged_state(x, t, bad)


def test_valid_strengths_still_work(net):
    x, t = _data(net)
    O_F = net.outputs(net.free_state(x))
    VC = net.clamped_state(x, t, 1.0)  # eta = 1: the outputs sit on the targets
    torch.testing.assert_close(net.outputs(VC), t, atol=1e-12, rtol=0)
    Vb = net.nudged_state(x, t, torch.tensor(0.5, dtype=f64))  # a 0-d tensor is a number
    assert bool(torch.isfinite(Vb).all()) and not torch.allclose(net.outputs(Vb), O_F)


# ---- conductances outside [k_min, k_max] ----------------------------------------------------------------------


@pytest.mark.parametrize("value", [1e5, 1e-5])
def test_conductances_outside_the_range_are_refused_at_construction(net, value):
    k = net.k.copy()
    k[3] = value
    with pytest.raises(ValueError, match=r"k: conductances of edges \[3\].*outside \[k_min, k_max\]"):
        ph.ResistorNetwork(net.n_nodes, net.edges, k, sources=net.sources, ground=net.ground,
                           output_nodes=net.output_pairs[:, 0])
    with pytest.raises(ValueError, match=r"edges \[3\].*outside"):
        net.with_k(k)
    # a wider range admits them, and then a step with lr = 0 leaves them as they are
    wide = ph.ResistorNetwork(net.n_nodes, net.edges, k, sources=net.sources, ground=net.ground,
                              output_nodes=net.output_pairs[:, 0], k_min=1e-6, k_max=1e6)
    x, t = _data(net)
    np.testing.assert_array_equal(ph.learning_step(wide, x, t, ph.ExactGradient(), lr=0.0).k, k)


def test_the_default_conductances_lie_in_the_range():
    g = ph.grid_graph(3, 3)
    kw = {"sources": [0], "ground": [8], "output_nodes": [4]}
    assert (ph.ResistorNetwork(g.n_nodes, g.edges, **kw).k == 1.0).all()
    assert (ph.ResistorNetwork(g.n_nodes, g.edges, k_min=2.0, k_max=5.0, **kw).k == 2.0).all()
    assert (ph.ResistorNetwork(g.n_nodes, g.edges, k_min=1e-4, k_max=0.5, **kw).k == 0.5).all()


def test_learning_from_conductances_outside_the_range_is_refused(net):
    x, t = _data(net)
    k = net.k.copy()
    k[0] = 1e5
    with pytest.raises(ValueError, match=r"k: conductances of edges \[0\]"):
        ph.learning_step(net, x, t, ph.ExactGradient(), lr=0.0, k=k)
    with pytest.raises(ValueError, match=r"k0: conductances of edges \[0\]"):
        ph.train(net, x, t, ph.ExactGradient(), steps=1, lr=0.0, k0=k)
    # evaluating the physics at any positive k stays allowed (only learning keeps the range)
    assert np.isfinite(net.cost(x, t, k))


# ---- learning_step: signature and type policy -----------------------------------------------------------------


def test_learning_step_defaults_to_net_k_and_matches_explicit_k(net):
    x, t = _data(net)
    rule = ph.CoupledLearning(0.1)
    a = ph.learning_step(net, x, t, rule, 2.0)
    b = ph.learning_step(net, x, t, rule, 2.0, k=net.k)
    np.testing.assert_array_equal(a.k, b.k)
    np.testing.assert_array_equal(a.direction, b.direction)
    assert a.cost == pytest.approx(net.cost(x, t))
    np.testing.assert_allclose(a.direction, ph.gradient_estimate(net, x, t, rule).numpy(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("kind", ["numpy", "list", "tensor", "tensor32"])
def test_learning_step_accepts_array_likes_and_returns_numpy(net, kind):
    x, t = _data(net)
    k = net.k.copy() * 1.1
    given = {"numpy": k, "list": k.tolist(), "tensor": torch.from_numpy(k), "tensor32": torch.from_numpy(k).float()}
    kin = given[kind]
    before = np.array(kin if not isinstance(kin, torch.Tensor) else kin.numpy(), copy=True)
    out = ph.learning_step(net, x.tolist(), t.numpy(), ph.ExactGradient(), lr=3.0, k=kin)
    assert type(out.k) is np.ndarray and type(out.direction) is np.ndarray
    assert out.k.dtype == out.direction.dtype == np.float64
    assert out.k.shape == out.direction.shape == (net.n_edges,)
    ref = ph.learning_step(net, x, t, ph.ExactGradient(), lr=3.0, k=np.asarray(before, dtype=np.float64))
    np.testing.assert_array_equal(out.k, ref.k)
    after = kin if not isinstance(kin, torch.Tensor) else kin.numpy()
    np.testing.assert_array_equal(np.asarray(after), before)  # the input is not modified


def test_learning_step_earlier_positional_order_still_works(net):
    x, t = _data(net)
    rule = ph.CoupledLearning(0.1)
    new = ph.learning_step(net, x, t, rule, 2.0, k=net.k, superpose=False)
    with pytest.warns(DeprecationWarning, match="learning_step"):
        old = ph.learning_step(net, net.k, x, t, rule, 2.0)
    with pytest.warns(DeprecationWarning):
        old_direct = ph.learning_step(net, net.k, x, t, rule, 2.0, superpose=False)
    with pytest.warns(DeprecationWarning):
        old_direct2 = ph.learning_step(net, net.k, x, t, rule, 2.0, False)
    np.testing.assert_allclose(old.k, new.k, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(old_direct.k, new.k)
    np.testing.assert_array_equal(old_direct2.k, new.k)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new order warns about nothing
        ph.learning_step(net, x, t, rule, 2.0)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "fast"])
def test_learning_step_refuses_bad_lr(net, bad):
    x, t = _data(net)
    with pytest.raises(ValueError, match="lr"):
        ph.learning_step(net, x, t, ph.ExactGradient(), bad)


def test_learning_step_refuses_a_non_rule_and_extra_positionals(net):
    x, t = _data(net)
    with pytest.raises(ValueError, match="rule must be a learning rule"):
        ph.learning_step(net, x, t, "coupled", 1.0)
    with pytest.raises(TypeError, match="positional"):
        ph.learning_step(net, x, t, ph.ExactGradient(), 1.0, net.k)


# ---- train ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"eval_every": 0}, "eval_every must be an integer >= 1"),
        ({"eval_every": -3}, "eval_every"),
        ({"eval_every": 2.5}, "eval_every"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"batch_size": -1}, "batch_size"),
        ({"lr": -1.0}, "lr must be finite and >= 0"),
        ({"lr": float("nan")}, "lr"),
        ({"steps": 2.0}, "steps must be an integer"),
        ({"steps": -1}, "steps"),
    ],
)
def test_train_refuses_bad_arguments(net, kw, match):
    x, t = _data(net)
    args = {"steps": 3, "lr": 1.0, **kw}
    with pytest.raises(ValueError, match=match):
        ph.train(net, x, t, ph.ExactGradient(), **args)


def test_empty_batches_are_refused_instead_of_nan(net):
    x0, t0 = torch.zeros(0, net.n_inputs, dtype=f64), torch.zeros(0, net.n_outputs, dtype=f64)
    with pytest.raises(ValueError, match=r"targets: the batch is empty \(B = 0\)"):
        ph.exact_gradient(net, x0, t0)
    with pytest.raises(ValueError, match="empty"):
        net.cost(x0, t0)
    with pytest.raises(ValueError, match="empty"):
        ph.gradient_estimate(net, x0, t0, ph.CoupledLearning(0.1))
    with pytest.raises(ValueError, match="empty"):
        ph.learning_step(net, x0, t0, ph.ExactGradient(), 1.0)
    with pytest.raises(ValueError, match="empty"):
        ph.train(net, x0, t0, ph.ExactGradient(), steps=2, lr=1.0)
    x, t = _data(net)
    with pytest.raises(ValueError, match=r"eval_targets: the batch is empty"):
        ph.train(net, x, t, ph.ExactGradient(), steps=2, lr=1.0, eval_inputs=x0, eval_targets=t0)
    with pytest.raises(ValueError, match="eval_inputs and eval_targets"):
        ph.train(net, x, t, ph.ExactGradient(), steps=2, lr=1.0, eval_inputs=x)
    assert net.free_state(x0).shape == (0, net.n_nodes)  # no cost involved: an empty batch of states is fine


def test_valid_train_arguments_give_finite_decreasing_costs(net):
    x, t = _data(net, B=8)
    res = ph.train(net, x, t, ph.ExactGradient(), steps=6, lr=5.0, batch_size=np.int64(3), eval_every=np.int64(2))
    assert res.steps == [0, 2, 4, 6] and len(res.train_cost) == 6
    assert np.isfinite(res.train_cost).all() and np.isfinite(res.eval_cost).all()
    assert res.eval_cost[-1] < res.eval_cost[0]
    frozen = ph.train(net, x, t, ph.ExactGradient(), steps=2, lr=0.0)
    np.testing.assert_array_equal(frozen.k, net.k)  # lr = 0 is allowed and changes nothing
