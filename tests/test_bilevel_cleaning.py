"""Bilevel problem 2: data hyper-cleaning (doubleopt.bilevel.cleaning)."""

import doctest

import pytest
import torch

import doubleopt as do
from doubleopt.bilevel import cleaning
from doubleopt.bilevel.cleaning import (
    CleaningData,
    HyperCleaning,
    cleaning_report,
    cleaning_split,
    corrupt_labels,
    detection_scores,
)

torch.set_num_threads(1)
F64 = torch.float64


# ---- data and corruption ------------------------------------------------------------------------


def test_corrupt_labels_fraction_seed_and_changed_labels():
    t = torch.arange(500) % 10
    new, mask = corrupt_labels(t, 0.3, generator=torch.Generator().manual_seed(3))
    assert mask.dtype == torch.bool and mask.shape == (500,) and int(mask.sum()) == 150
    assert bool((new[mask] != t[mask]).all())  # every corrupted label really changed
    assert bool((new[~mask] == t[~mask]).all())  # the others did not
    assert int(new.min()) >= 0 and int(new.max()) <= 9
    assert torch.equal(t, torch.arange(500) % 10)  # the input is not modified in place
    # seeded: same seed, same corruption; another seed, another one
    new2, mask2 = corrupt_labels(t, 0.3, generator=torch.Generator().manual_seed(3))
    assert torch.equal(new, new2) and torch.equal(mask, mask2)
    new3, mask3 = corrupt_labels(t, 0.3, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(mask, mask3)
    # the new class is spread over the other classes (not, e.g., always c + 1)
    shifts = ((new[mask] - t[mask]) % 10).unique()
    assert len(shifts) >= 7
    # no corruption at fraction 0
    new0, mask0 = corrupt_labels(t, 0.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(new0, t) and not bool(mask0.any())


def test_cleaning_split_sizes_disjoint_and_mask_matches_labels():
    data = cleaning_split(300, 100, corruption=0.3, n_test=50, seed=5)
    assert isinstance(data, CleaningData)
    assert data.train.features.shape == (1, 300, 64) and data.val.features.shape == (1, 100, 64)
    assert data.test.features.shape == (1, 50, 64) and data.train.onehot.shape == (1, 300, 10)
    assert int(data.corrupted.sum()) == 90
    noisy = data.train.onehot[0].argmax(-1)
    assert torch.equal(noisy != data.clean_labels, data.corrupted)
    # train and validation images are distinct rows of the train split (no image used twice)
    both = torch.cat([data.train.features[0], data.val.features[0]])
    assert torch.unique(both, dim=0).shape[0] == 400
    again = cleaning_split(300, 100, corruption=0.3, n_test=50, seed=5)
    assert torch.equal(again.corrupted, data.corrupted) and torch.equal(again.train.features, data.train.features)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"corruption": 1.0}, r"fraction .* \[0, 1\)"),
        ({"corruption": -0.1}, r"fraction .* \[0, 1\)"),
        ({"corruption": float("nan")}, r"fraction .* \[0, 1\)"),
        ({"n_train": 1200, "n_val": 200}, r"n_train \+ n_val must be <= 1348"),
        ({"n_train": 0}, "n_train must be an integer >= 1"),
        ({"n_val": 0}, "n_val must be an integer >= 1"),
        ({"n_test": 450}, r"n_test must be an integer in \[1, 449\]"),
    ],
)
def test_cleaning_split_bad_input(kwargs, match):
    args = {"n_train": 100, "n_val": 50, **kwargs}
    with pytest.raises(ValueError, match=match):
        cleaning_split(**args)


def test_corrupt_labels_bad_input():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="1-d integer"):
        corrupt_labels(torch.zeros(5), 0.1, generator=g)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        corrupt_labels(torch.tensor([0, 3]), 0.1, n_classes=3, generator=g)
    with pytest.raises(ValueError, match="n_classes"):
        corrupt_labels(torch.tensor([0, 0]), 0.1, n_classes=1, generator=g)


def test_problem_bad_input():
    with pytest.raises(ValueError, match="l2 must be finite and > 0"):
        HyperCleaning(10, l2=0.0)
    with pytest.raises(ValueError, match="n_train"):
        HyperCleaning(0)
    data = cleaning_split(50, 20, n_test=10)
    with pytest.raises(ValueError, match=r"features must have shape \(B, 40, 64\)"):
        do.solve(HyperCleaning(40), do.LBFGS(), data.train)


# ---- metrics --------------------------------------------------------------------------------------


def test_detection_scores_against_hand_computation():
    corrupted = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], dtype=torch.bool)
    flagged = torch.tensor([1, 1, 1, 0, 1, 1, 0, 0, 0, 0], dtype=torch.bool)
    # TP = 3, FP = 2, FN = 1: P = 3/5, R = 3/4, F1 = 2 * 0.6 * 0.75 / 1.35 = 2/3
    p, r, f1 = detection_scores(flagged, corrupted)
    assert p == pytest.approx(0.6) and r == pytest.approx(0.75) and f1 == pytest.approx(2 / 3)
    assert detection_scores(torch.zeros(4, dtype=torch.bool), torch.tensor([True, False, False, False])) == (0, 0, 0)
    with pytest.raises(ValueError, match="bool tensors of one shape"):
        detection_scores(flagged[:5], corrupted)


def test_cleaning_report_flags_weights_below_threshold():
    data = cleaning_split(20, 10, corruption=0.3, n_test=30, seed=1)
    prob = HyperCleaning(20)
    bad = data.corrupted
    lam = torch.where(bad, -2.0, 2.0).to(F64)
    lam[torch.nonzero(bad)[0]] = 0.5  # one corrupted example missed: weight 0.62 >= 0.5
    lam[torch.nonzero(~bad)[0]] = -0.1  # one clean example flagged: weight 0.475 < 0.5
    with torch.no_grad():
        prob.lam.copy_(lam)
    y = torch.zeros(1, prob.dim, dtype=F64)
    y[0, 64 * 10 + 3] = 1.0  # the classifier always predicts class 3 (its bias)
    rep = cleaning_report(prob, y, data)
    # 6 corrupted, 5 of them flagged, plus 1 clean: P = 5/6, R = 5/6
    assert (rep.n_corrupted, rep.n_flagged) == (6, 6)
    assert rep.precision == pytest.approx(5 / 6) and rep.recall == pytest.approx(5 / 6)
    assert rep.f1 == pytest.approx(5 / 6) and rep.threshold == 0.5
    assert rep.test_accuracy == pytest.approx(float((data.test.onehot[0].argmax(-1) == 3).double().mean()))
    # a threshold of 0.7 also flags the missed one (0.62): recall 1
    assert cleaning_report(prob, y, data, threshold=0.7).recall == 1.0
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\)"):
        cleaning_report(prob, y, data, threshold=1.0)


# ---- hypergradient --------------------------------------------------------------------------------


def _fd_setup():
    data = cleaning_split(60, 40, corruption=0.3, n_test=10, seed=2)
    prob = HyperCleaning(60, l2=1e-2)
    with torch.no_grad():
        prob.lam.copy_(torch.randn(60, generator=torch.Generator().manual_seed(0), dtype=F64))
    return data, prob


def _val_loss(prob, data):
    with torch.no_grad():
        sol = do.solve(prob, do.Newton(), data.train, tol=1e-14, max_steps=50)
        return float(prob.cross_entropy(sol.y, data.val))


@pytest.mark.parametrize("adjoint", [do.Implicit(do.Cholesky()), do.Implicit()], ids=["cholesky", "cg-default"])
def test_hypergradient_matches_central_finite_differences(adjoint):
    data, prob = _fd_setup()
    sol = do.solve(prob, do.Newton(), data.train, tol=1e-14, max_steps=50, adjoint=adjoint)
    prob.cross_entropy(sol.y, data.val).backward()
    hg = prob.lam.grad.clone()
    assert hg.shape == (60,)
    base = prob.lam.detach().clone()
    eps = 1e-4
    corrupted = torch.nonzero(data.corrupted).flatten()
    clean = torch.nonzero(~data.corrupted).flatten()
    for j in [int(corrupted[0]), int(corrupted[1]), int(clean[0]), int(clean[1])]:
        vals = []
        for s in (1, -1):
            with torch.no_grad():
                prob.lam.copy_(base)
                prob.lam[j] += s * eps
            vals.append(_val_loss(prob, data))
        fd = (vals[0] - vals[1]) / (2 * eps)
        assert abs(fd) > 1e-6  # a real derivative, not a zero that any gradient would match
        assert float(hg[j]) == pytest.approx(fd, rel=1e-6), (j, float(hg[j]), fd)
    with torch.no_grad():
        prob.lam.copy_(base)


# ---- the outer loop -------------------------------------------------------------------------------


def test_short_bilevel_run_downweights_corrupted_examples():
    data = cleaning_split(200, 100, corruption=0.3, n_test=100, seed=3)
    prob = HyperCleaning(200, l2=1e-2)
    res = do.bilevel.optimize(
        prob,
        do.LBFGS(),
        data.train,
        lambda y: prob.cross_entropy(y, data.val),
        [prob.lam],
        adjoint=do.Implicit(),
        outer_steps=15,
        outer_lr=0.1,
        tol=do.bilevel.ToleranceSchedule(1e-4, 1e-7, 0.8),
    )
    assert res.stopped is None and res.skipped == []
    assert res.history[-1].outer_loss < res.history[0].outer_loss
    w = prob.weights().detach()
    bad = data.corrupted
    # every weight starts at 0.5; the clean examples must end clearly above the corrupted ones
    assert float(w[~bad].mean() - w[bad].mean()) > 0.2, (float(w[~bad].mean()), float(w[bad].mean()))
    rep = cleaning_report(prob, res.solution.y, data)
    assert rep.f1 > 0.75 and rep.recall > 0.75, rep


def test_module_doctests():
    result = doctest.testmod(cleaning, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
