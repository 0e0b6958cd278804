"""`doubleopt bench rl_optimizer` (Li & Malik 2017): the quick study end to end, and its definitions (divergence,
tuning selection, "best" with ties, the margin of victory) on hand-made curves."""

import json
import math
import shlex

import pytest
import torch

import doubleopt as do
from doubleopt.bench.registry import load_study
from doubleopt.learned import LSTMOptimizer, li_malik_task
from doubleopt.learned.estimators import ESTIMATORS

INF = math.inf


@pytest.fixture(scope="module")
def study():
    return load_study("rl_optimizer")


def strict_json(path):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name} in {path}")

    return json.loads(path.read_text(), parse_constant=refuse)


# ---- the quick study -----------------------------------------------------------------------------------------
def test_quick_study_writes_finite_results(study, tmp_path):
    methods = [m for m, t in study.TRAINING.items() if t.method in ESTIMATORS]  # every method whose estimator exists
    assert {"lstm-tbptt", "mlp-tbptt", "policy-tbptt"} <= set(methods)
    study.main(["--quick", "--out", str(tmp_path), "--methods", *methods])
    data = strict_json(tmp_path / "results.json")
    T = data["iterations"]
    assert T == 10 and data["n_test"] == 100 and data["conditions"]["torch_threads"] == 1
    assert set(data["families"]) == {"logistic", "robust", "mlp"}
    names = list(study.BASELINES) + methods
    for family, fam in data["families"].items():
        # every method ran on every test objective; every summary number is finite
        assert list(fam["methods"]) == names
        for name, s in fam["methods"].items():
            for key in ("final_mean", "mean_1_T", "final_median", "failed_fraction", "evals_per_iteration"):
                assert isinstance(s[key], float) and math.isfinite(s[key]), (family, name, key)
            for key in ("curve_mean_finite_runs", "curve_q25", "curve_median", "curve_q75"):
                assert len(s[key]) == T + 1 and all(isinstance(v, float) and v >= 0 for v in s[key])
            assert s["curve_q25"][0] <= s["curve_median"][0] <= s["curve_q75"][0]
        # baselines: the chosen point is on the stated grid and has the best (failed, criterion) score
        for t in fam["tuning"].values():
            k = t["grid"].index(t["chosen"])
            assert (t["grid_failed_runs"][k], t["grid_criterion"][k]) == min(
                zip(t["grid_failed_runs"], t["grid_criterion"])
            )
            assert t["runs_per_point"] == 90 * 2
        # learned: trained here (timed), with the equivalent train-lopt command
        for m in methods:
            info = fam["training"][m]
            assert info["source"] == "retrained" and info["wall_time_s"] > 0
            assert info["record"]["task_name"] == f"li-malik-{family}-train"
            assert info["record"]["train_lopt_command"].startswith("doubleopt train-lopt --arch")
        # fraction best at T/4, T/2, T: at least one method is best on every objective
        assert list(fam["fraction_best"]) == ["2", "5", "10"]
        for fr in fam["fraction_best"].values():
            assert set(fr) == set(names) and sum(fr.values()) >= 1.0 - 1e-12
        margin = fam["margin"]
        assert len(margin["final_per_objective"]["best learned"]) == 100
        assert all(-1 <= v <= 1 for v in margin["final_per_objective"]["best learned"])
        assert len(margin["curve_mean"]["best learned"]) == T + 1
        # generalization: 4 variants x (GD + the learned methods), GD's own ratio 1
        gen = fam["generalization"]
        assert len(gen) == 4 * (1 + len(methods))
        assert all(r["ratio_to_gd_final"] == 1.0 for r in gen if r["method"] == "GD")
        assert {r["iterations"] for r in gen} == {T, 20}
        cost = fam["eval_cost"]
        assert cost["policy"] in methods and cost["policy_ratio_to_gd"] > 0
    assert (tmp_path / "table.md").read_text().count("| logistic |") >= len(names)
    for f in ("logistic", "robust", "mlp", "margin"):
        assert (tmp_path / f"rl_optimizer_{f}.png").stat().st_size > 1000
    # the table is rendered from the JSON alone
    before = (tmp_path / "table.md").read_text()
    (tmp_path / "table.md").unlink()
    study.main(["--render-only", "--out", str(tmp_path)])
    assert (tmp_path / "table.md").read_text() == before


def test_unregistered_method_is_an_error(study, monkeypatch):
    monkeypatch.setitem(study.TRAINING, "policy-xyz", study.Training("policy", "no-such-estimator", 1, {}, "xyz"))
    with pytest.raises(ValueError, match="not registered.*--methods"):
        study.main(["--quick", "--methods", "lstm-tbptt", "policy-xyz"])
    with pytest.raises(ValueError, match="unknown learned method"):
        study.main(["--quick", "--methods", "nope"])


# ---- weights: loaded with their record, checked against the method --------------------------------------------
def test_weights_record_and_checks(study, tmp_path):
    torch.manual_seed(0)
    lopt = LSTMOptimizer()
    record = {
        "command": "doubleopt train-lopt --arch lstm",
        "wall_time_s": 12.5,
        "task_name": "li-malik-logistic-train",
        "meta_config": {"method": "tbptt"},
        "meta_steps": 7,
    }
    path = lopt.save_weights(tmp_path / "w.safetensors", metadata={"record": record})
    loaded, info = study.load_trained("lstm-tbptt", "logistic", str(path))
    assert info["wall_time_s"] == 12.5 and info["command"] == record["command"] and info["meta_steps"] == 7
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), lopt.state_dict().values()))
    with pytest.raises(ValueError, match="trained on 'li-malik-logistic-train'"):
        study.load_trained("lstm-tbptt", "robust", str(path))
    with pytest.raises(ValueError, match="architecture 'lstm'"):
        study.load_trained("policy-tbptt", "logistic", str(path))
    with pytest.raises(ValueError, match="--retrain"):
        study.resolve_weights(str(tmp_path / "missing.safetensors"))
    args = study.parse_args(study.Args, ["--weights", f"lstm-tbptt={tmp_path}/{{family}}.safetensors"])
    assert study.weight_specs(args)["lstm-tbptt"].format(family="mlp") == f"{tmp_path}/mlp.safetensors"
    with pytest.raises(ValueError, match="another|other objective sets"):
        study.main(["--seed", "3", "--methods", "lstm-tbptt", "--weights", f"lstm-tbptt={path}"])


def test_retraining_equals_the_recorded_train_lopt_command(study, tmp_path):
    from doubleopt.cli import main as cli

    args = study.parse_args(study.Args, ["--quick"])
    lopt, info = study.train_here("policy-tbptt", "robust", args)
    argv = shlex.split(info["record"]["train_lopt_command"])[1:]
    argv[argv.index("--out") + 1] = str(tmp_path)
    assert cli(argv + ["--no-progress"]) == 0
    theirs = do.learned.load_pretrained(str(tmp_path / "policy-li-malik-robust.safetensors"))
    for (k, a), b in zip(lopt.state_dict().items(), theirs.state_dict().values()):
        assert torch.equal(a, b), k


# ---- definitions on hand-made curves -----------------------------------------------------------------------------
def test_divergence_marks_the_rest_of_the_run_infinite(study):
    values = torch.tensor([[1.0, 1.0, 1.0], [0.5, 2.0, 0.9], [float("nan"), 3.0, 0.8], [7.0, 4.0, 1.2]])
    c = study.make_curves(values)
    assert c.nonfinite.tolist() == [True, False, False]
    assert c.failed.tolist() == [True, True, True]  # non-finite; ended above the start (twice)
    assert c.values[:2, 0].tolist() == [1.0, 0.5] and torch.isinf(c.values[2:, 0]).all()
    assert c.values[:, 1].tolist() == [1.0, 2.0, 3.0, 4.0]


def test_run_records_a_diverging_solver(study):
    fam = do.learned.QuadraticRegression(dim=3)
    x = fam.sample(2, seed=0)
    y0 = torch.ones(2, 3)
    c = study.run(fam, do.GD(lr=1e12), x, y0, 6)  # overflows float32 within a few steps
    assert c.values.shape == (7, 2) and bool(c.nonfinite.all())
    first = int(torch.isinf(c.values[:, 0]).nonzero()[0])
    assert 1 <= first < 6 and torch.isfinite(c.values[:first]).all() and torch.isinf(c.values[first:, 0]).all()
    ok = study.run(fam, do.GD(lr=1e-3), x, y0, 6)
    assert not bool(ok.failed.any()) and bool((ok.values[-1] < ok.values[0]).all())


def test_tuning_selection(study):
    # a grid point with a failed run never beats a stable one, however low its criterion
    assert study.select([(1, 0.01), (0, 0.5), (0, 0.3)]) == 2
    # all failed: fewest failures first; then the criterion; ties go to the earlier point
    assert study.select([(3, 0.1), (2, 0.9), (2, 0.4)]) == 2
    assert study.select([(0, 0.3), (0, 0.3)]) == 0
    # the criterion: mean over iterations 1..T of the runs that did not fail (never NaN)
    c = study.make_curves(torch.tensor([[4.0, 4.0, 4.0], [2.0, 1.0, float("inf")], [1.0, 3.0, 1.0]]))
    assert study.tuning_score(c) == (1, 1.75)
    bad = study.make_curves(torch.tensor([[1.0], [float("nan")]]))
    assert study.tuning_score(bad) == (1, INF)


def test_fraction_best_with_ties(study):
    values = {
        "a": torch.tensor([1.0, 2.0, INF, 5.0], dtype=torch.float64),
        "b": torch.tensor([1.0 + 1e-12, 1.5, INF, 5.0], dtype=torch.float64),
        "c": torch.tensor([1.1, 1.5 * (1 + 5e-10), 3.0, INF], dtype=torch.float64),
        "d": torch.tensor([1.2, 1.5 * (1 + 3e-9), INF, 5.0 * (1 + 2e-9)], dtype=torch.float64),
    }
    fr = study.fraction_best(values)
    # run 0: a and b tie; run 1: b and c tie (5e-10 < 1e-9), d is 3e-9 away; run 2: only c is finite;
    # run 3: a and b tie at 5, d is 2e-9 away
    assert fr == {"a": 0.5, "b": 0.75, "c": 0.5, "d": 0.0}
    everyone_diverged = study.fraction_best({"a": torch.tensor([INF]), "b": torch.tensor([INF])})
    assert everyone_diverged == {"a": 0.0, "b": 0.0}


def test_margin_of_victory(study):
    base = torch.tensor([1.0, 0.5, 0.0, INF, 2.0, INF, 0.0])
    learned = torch.tensor([0.5, 1.0, 0.0, 1.0, INF, INF, 0.25])
    assert study.relative_margin(base, learned).tolist() == [0.5, -0.5, 0.0, 1.0, -1.0, 0.0, -1.0]
    with pytest.raises(ValueError, match="nonnegative"):
        study.relative_margin(torch.tensor([-1.0]), torch.tensor([1.0]))
    mk = study.make_curves
    curves = {
        "GD": mk(torch.tensor([[2.0, 2.0], [1.0, 0.4]])),
        "NCG": mk(torch.tensor([[2.0, 2.0], [0.8, 0.5]])),
        "L1": mk(torch.tensor([[2.0, 2.0], [0.4, 0.8]])),
        "L2": mk(torch.tensor([[2.0, 2.0], [0.9, 0.2]])),
    }
    m = study.margins(curves, ["L1", "L2"], ["GD", "NCG"])
    # best baseline [0.8, 0.4]; best learned [0.4, 0.2]
    assert torch.allclose(m["best learned"][1], torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert torch.allclose(m["L2"][1], torch.tensor([-0.1 / 0.9, 0.5], dtype=torch.float64))
    assert m["best learned"][0].tolist() == [0.0, 0.0]


def test_objective_sets_match_li_malik_task(study):
    for family in ("logistic", "mlp"):
        for split in ("train", "test"):
            _, x = study.objective_set(family, split, seed=0)
            ref = li_malik_task(family, split).contexts
            for f in ("features", "targets") if family == "logistic" else ("inputs", "labels"):
                assert torch.equal(getattr(x, f), getattr(ref, f))
    _, scaled = study.objective_set("robust", "test", seed=0, scale=10.0)
    ref = li_malik_task("robust", "test").contexts
    assert torch.equal(scaled.features, 10.0 * ref.features) and torch.equal(scaled.targets, ref.targets)
    prob, wide = study.objective_set("logistic", "train", seed=0, n_features=10)
    assert wide.features.shape == (90, 100, 10) and prob.dim == 11


def test_json_has_no_nonfinite_numbers(study):
    data = study.finite_or_none({"a": INF, "b": [1.0, float("nan")], "t": torch.tensor([2.0, -INF]), "n": 3})
    assert data == {"a": None, "b": [1.0, None], "t": [2.0, None], "n": 3}
    assert json.loads(json.dumps(data)) == data
    assert study.fmt(None) == "n/a" and study.diverged_if_none(None) == "diverged" and study.fmt(0.5) == "0.5"
    assert study.ratio(1.0, 0.0) == INF
