"""Learning to optimize by reinforcement learning (Li & Malik 2017): `doubleopt bench rl_optimizer`.

Per family of the paper (``logistic``, ``robust``, ``mlp``: :func:`doubleopt.learned.li_malik_task`, 90 training and
100 held-out test objectives), every method runs ``--iterations`` (100) iterations on the 100 **test** objectives
from fixed random starting points (``problem.init(x, Generator(start_seed))``, one per objective, the same for every
method):

* **hand-designed baselines**, each tuned on the 90 **training** objectives (``--tune-starts`` random starts each,
  seed ``tune_seed``) over a stated grid (:data:`BASELINES`):

  - gradient descent: step size on a log-grid 1e-3 .. 1e2, 4 points per decade (21 points);
  - momentum (heavy ball): the same step-size grid x momentum in {0.5, 0.9, 0.99};
  - Adam: step size on a log-grid 1e-4 .. 1e1, 4 points per decade (21 points), betas (0.9, 0.999);
  - nonlinear conjugate gradient (Polak-Ribiere+, strong-Wolfe line search): it has **no step size** (the first
    trial step of each line search is the Nocedal-Wright guess); tuned over the line search's curvature constant
    c2 in {0.1, 0.4, 0.9};
  - L-BFGS (Armijo backtracking from the unit step): it has **no step size**; tuned over the memory in
    {3, 5, 10, 20}.

  One iteration of NCG / L-BFGS may evaluate the objective several times (line search); the table reports the
  batched objective evaluations per iteration.

* **learned optimizers**, meta-trained on the same 90 training objectives (:data:`TRAINING`: architecture,
  estimator, ``MetaConfig`` settings and meta-steps per method): the coordinatewise LSTM and the per-parameter MLP
  optimizers (meta-gradients, ``tbptt``) and the Li & Malik :class:`~doubleopt.learned.PolicyOptimizer` trained three
  ways: guided policy search (``gps``), PPO (``ppo``) and meta-gradients through its mean action (``tbptt``). Each
  is loaded from weights (``--weights``, default the shipped ``load_pretrained`` name ``<method>-<family>``, e.g.
  ``policy-gps-logistic``; the training wall time and command are read from the weights' ``record`` metadata) or,
  with ``--retrain``, trained here and timed. A method whose estimator is not registered is an error unless
  ``--methods`` leaves it out.

**Tuning criterion** (the paper's RL return): the mean over the training runs of the mean objective over
iterations 1..T. A run **fails** when its iterate or objective becomes non-finite, or when its objective at
iteration T is above its starting objective. Grid points are ranked by (number of failed training runs, criterion
over the runs that did not fail): a diverging setting never wins over a stable one and no non-finite value is
ever averaged. Ties go to the earlier grid point.

**Outputs** per family: (i) mean objective over the test objectives vs iteration 0..T with the interquartile range
(``docs/img/rl_optimizer_<family>.png``; the mean line is over the runs that stayed finite, the legend counts the
others); (ii) the margin of victory (``docs/img/rl_optimizer_margin.png``): per test objective :math:`i` and
iteration :math:`t`, with :math:`L_i(t)` the lowest objective of the learned methods and :math:`B_i(t)` of the
hand-designed ones (all objectives are nonnegative losses, which the study checks),

.. math:: M_i(t) = \\frac{B_i(t) - L_i(t)}{\\max(B_i(t), L_i(t))} \\in [-1, 1]

(0 when both are 0 or both diverged; +1 when only the baselines diverged, -1 when only the learned ones did):
positive when a learned optimizer wins, by that fraction of the larger value; the raw difference :math:`B - L`
is stored too; (iii) the fraction of test objectives on which each method is best at iterations T/4, T/2, T
(25 / 50 / 100): a method is best on objective i if its value is within 1e-9 relative of the lowest (ties count
for every tied method; a diverged run is never best); (iv) training wall time per learned method; (v) one table
of all methods and families: mean objective at iteration T and mean over iterations 1..T (a mean over runs of
which one diverged is infinite: the JSON holds ``null`` and the table says "diverged").

**Generalization**: each learned optimizer, trained on the default family, on objectives it never saw: other
dimensions (:data:`DIMENSION_VARIANTS`), inputs scaled by 10, and ``--long-iterations`` (500) iterations; against
gradient descent re-tuned (same grid and criterion) on the variant's own training objectives. Rows: failed and
non-finite fractions, the mean objective at the last iteration over the runs that stayed finite, and its ratio to
tuned GD's (and the same for the mean over all iterations).

**Evaluation cost**: the trained GPS policy (else the first policy in ``--methods``) on ``--cost-batch`` (1000)
objectives batched, against batched tuned gradient descent, ``--iterations`` iterations each, no gradient tape:
warm-up + median of ``--cost-repeats`` wall times, threads pinned (``--threads``), ratio policy / GD.

Run: ``doubleopt bench rl_optimizer`` (shipped weights), ``doubleopt bench rl_optimizer -- --retrain`` (train every
method here; ``--save-weights DIR`` keeps the weights with their record, which also holds the equivalent
``doubleopt train-lopt`` command: same seed, settings and objectives, same weights), ``-- --quick`` for a smoke run
of seconds (10 iterations, tiny grids and budgets; writes only into ``--out``). ``-- --render-only`` re-renders
``table.md`` from ``results.json``.
Results: ``docs/results/rl_optimizer/results.json`` and ``table.md``.

Reference:
    K. Li, J. Malik, "Learning to optimize", ICLR 2017 (arXiv:1606.01885).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import doubleopt as do
from doubleopt.bench import Report, conditions, generator, parse_args, seed_all, set_threads, time_call
from doubleopt.learned import LSTMOptimizer, MLPOptimizer, PolicyOptimizer, li_malik_task
from doubleopt.learned._cli import estimator_counters
from doubleopt.learned._pretrained import PRETRAINED, WEIGHTS_DIR
from doubleopt.learned.estimators import ESTIMATORS
from doubleopt.learned.meta import MetaConfig, MetaTrainer, meta_train

DEFAULT_OUT = "docs/results/rl_optimizer"
QUICK_OUT = "bench_results/rl_optimizer_quick"  # where --quick writes when --out is left at DEFAULT_OUT
FAMILIES = ("logistic", "robust", "mlp")
TIE_RTOL = 1e-9  # "best" ties: within this relative distance of the lowest value
N_TRAIN, N_TEST = 90, 100  # objectives per family: li_malik_task's training / held-out test split (the paper's)


@dataclass
class Args:
    """Li & Malik (2017): learned optimizers (a policy by GPS / PPO / meta-gradients, LSTM, MLP) vs tuned baselines.

    What is compared: per objective family (logistic, robust, mlp), the objective over ``--iterations``
    iterations on the 100 held-out test objectives, every method from the same random starting points (cold),
    with the same number of iterations, float32, ``--threads`` threads: gradient descent, momentum, Adam,
    nonlinear CG and L-BFGS, each tuned on the 90 training objectives over a stated grid, against the learned
    optimizers meta-trained on the same 90 training objectives (shipped weights, or ``--retrain``). Also the
    learned optimizers on unseen variants against re-tuned gradient descent, and the wall time of one batched
    evaluation (policy vs tuned GD, warm-up + median of ``--cost-repeats``).

    Seeds (the global generators are seeded once at the top of ``main`` with ``--train-seed``): ``--seed`` the
    objective sets (``seed + 7919`` the evaluation-cost batch), ``--start-seed`` the test starting points
    (``start_seed + 1`` the evaluation-cost batch's), ``--tune-seed`` the tuning starts, ``--train-seed`` each
    ``--retrain`` run (its ``MetaConfig`` seed, and the global generator re-seeded before its initial weights, so
    they do not depend on which methods ran before).
    """

    families: list[str] = field(default_factory=lambda: list(FAMILIES))  # objective families to run
    methods: list[str] = field(default_factory=lambda: list(TRAINING))  # learned methods (keys of TRAINING)
    retrain: bool = False  # meta-train every learned method here (timed) instead of loading weights
    weights: list[str] = field(default_factory=list)  # METHOD=NAME_OR_PATH overrides ("{family}" is filled in)
    save_weights: str = ""  # with --retrain: write METHOD-FAMILY.safetensors (with its record) into this folder
    iterations: int = 100  # optimizer iterations on every objective (the paper's horizon)
    long_iterations: int = 500  # generalization: iterations of the "more iterations" rows
    seed: int = 0  # seed of the objective sets (li_malik_task; loaded weights need 0, train-lopt's)
    start_seed: int = 1000  # seed of the test starting points (the same for every method)
    tune_seed: int = 2000  # seed of the training starting points used to tune the baselines
    tune_starts: int = 2  # random starts per training objective when tuning (90 x 2 runs per grid point)
    train_seed: int = 0  # global generators (the initial weights of --retrain runs) and MetaConfig's seed
    cost_batch: int = 1000  # evaluation cost: objectives solved as one batch
    cost_repeats: int = 7  # evaluation cost: timed repeats (median) after one warm-up
    threads: int = 1  # torch / BLAS threads for everything (fixed, reported)
    quick: bool = False  # smoke run of seconds: 10 iterations, tiny grids and budgets; implies --retrain
    render_only: bool = False  # only re-render OUT/table.md from OUT/results.json
    out: str = DEFAULT_OUT  # results folder (results.json, table.md)
    img_dir: str = "docs/img"  # plots rl_optimizer_<family>.png, rl_optimizer_margin.png (--quick: into --out)


# ======================================================================================================
# the methods: tuning grids of the baselines, training settings of the learned optimizers
# ======================================================================================================
def log_grid(lo: float, hi: float, per_decade: int = 4) -> list[float]:
    """``lo .. hi`` (powers of 10) with ``per_decade`` points per decade, ends included."""
    a, b = round(math.log10(lo)), round(math.log10(hi))
    return [10 ** (a + k / per_decade) for k in range((b - a) * per_decade + 1)]


@dataclass(frozen=True)
class Baseline:
    """A hand-designed solver and its tuning grid (a list of keyword settings)."""

    build: Any  # settings -> solver
    grid: list[dict[str, float]]
    quick_grid: list[dict[str, float]]


BASELINES: dict[str, Baseline] = {
    "GD": Baseline(lambda s: do.GD(lr=s["lr"]), [{"lr": lr} for lr in log_grid(1e-3, 1e2)], [{"lr": 0.1}, {"lr": 1.0}]),
    "Momentum": Baseline(
        lambda s: do.Momentum(lr=s["lr"], momentum=s["momentum"]),
        [{"lr": lr, "momentum": m} for m in (0.5, 0.9, 0.99) for lr in log_grid(1e-3, 1e2)],
        [{"lr": 0.1, "momentum": 0.9}, {"lr": 0.1, "momentum": 0.5}],
    ),
    "NCG": Baseline(lambda s: do.NonlinearCG(c2=s["c2"]), [{"c2": c} for c in (0.1, 0.4, 0.9)], [{"c2": 0.1}]),
    "L-BFGS": Baseline(
        lambda s: do.LBFGS(memory=s["memory"]), [{"memory": m} for m in (3, 5, 10, 20)], [{"memory": 5}]
    ),
    "Adam": Baseline(
        lambda s: do.Adam(lr=s["lr"]), [{"lr": lr} for lr in log_grid(1e-4, 1e1)], [{"lr": 0.01}, {"lr": 0.1}]
    ),
}

ARCHS = {"lstm": LSTMOptimizer, "mlp": MLPOptimizer, "policy": PolicyOptimizer}


@dataclass(frozen=True)
class Training:
    """How one learned method is meta-trained on a family's training objectives (``--retrain``)."""

    arch: str  # "lstm" | "mlp" | "policy" (ARCHS)
    method: str  # meta-training estimator, a name in doubleopt.learned.estimators.ESTIMATORS
    meta_steps: int  # meta-steps of the full run
    config: dict[str, Any]  # MetaConfig keyword arguments (besides method and seed; "options": the estimator's own)
    label: str  # the name in tables and plots
    lopt: dict[str, Any] = field(default_factory=dict)  # constructor arguments of the architecture
    quick_meta_steps: int = 2
    quick_config: dict[str, Any] = field(default_factory=lambda: {"unroll": 5, "horizon": 10, "batch": 4})
    # per family, settings that differ from the above: {"lopt": {...}, "config": {...}, "options": {...},
    # "meta_steps": N}
    family: dict[str, dict[str, Any]] = field(default_factory=dict)

    def settings(self, family: str) -> Training:
        """These settings with ``family``'s overrides applied (``options`` merge into ``config["options"]``)."""
        over = self.family.get(family, {})
        unknown = set(over) - {"lopt", "options", "meta_steps", "config"}
        if unknown:
            raise ValueError(f"unknown per-family training settings {sorted(unknown)}")
        config = {**self.config, **over.get("config", {})}
        if "options" in over:
            config["options"] = {**config.get("options", {}), **over["options"]}
        return dataclasses.replace(
            self,
            lopt={**self.lopt, **over.get("lopt", {})},
            config=config,
            meta_steps=over.get("meta_steps", self.meta_steps),
            family={},
        )


# Meta-gradient runs (TBPTT): K = 20, T = 100 (the evaluation horizon), 16 objectives per trajectory, the uniform
# meta-objective mean_t f(theta_t) (the study's criterion); about 25 s per method on the logistic family (this
# 2-core machine, 1 thread; 60-75 s on mlp).
# GPS: the policy with step unit 0.3 s_g and a fixed standard deviation (exploration does not collapse), episodes of
# T = 100, GPS's default options (8 runs per objective and iteration, a KL bound of 0.25 per step and coordinate,
# a C-step every 50 meta-steps); 30 GPS iterations (20 on mlp, whose C-step costs about 10 s), the step size
# decayed to 0 (cosine) over the run so the final policy is not a snapshot of an oscillation.
# PPO: batches of 16 episodes of T = 100, its default options (4 epochs x 4 minibatches = 16 meta-steps per batch),
# 20000 meta-steps (1250 batches), the step size decayed over the run.
_TBPTT = {"unroll": 20, "horizon": 100, "batch": 16}
_EPISODES = {"unroll": 100, "horizon": 100, "batch": 16}
_QUICK_EPISODES = {"unroll": 10, "horizon": 10, "batch": 4}
_GPS_POLICY = {"step_scale": 0.3, "learn_std": False}
TRAINING: dict[str, Training] = {
    "lstm-tbptt": Training("lstm", "tbptt", 1000, _TBPTT, "LSTM (TBPTT)"),
    "mlp-tbptt": Training("mlp", "tbptt", 1000, _TBPTT, "MLP (TBPTT)"),
    "policy-tbptt": Training("policy", "tbptt", 1000, _TBPTT, "policy (TBPTT)"),
    "policy-gps": Training(
        "policy",
        "gps",
        1500,
        {**_EPISODES, "meta_lr_decay": 1500},
        "policy (GPS)",
        lopt=_GPS_POLICY,
        quick_config=_QUICK_EPISODES,
        family={"mlp": {"meta_steps": 1000, "config": {"meta_lr_decay": 1000}}},
    ),
    "policy-ppo": Training(
        "policy", "ppo", 20000, {**_EPISODES, "meta_lr_decay": 20000}, "policy (PPO)", quick_config=_QUICK_EPISODES
    ),
}

# generalization: other dimensions per family (constructor arguments of the family's problem class)
DIMENSION_VARIANTS: dict[str, list[tuple[str, dict[str, int]]]] = {
    "logistic": [("n_features=10", {"n_features": 10}), ("n_features=30", {"n_features": 30})],
    "robust": [("n_features=10", {"n_features": 10}), ("n_features=30", {"n_features": 30})],
    "mlp": [("n_inputs=10", {"n_inputs": 10}), ("hidden=16", {"hidden": 16})],
}
SCALE = 10.0  # generalization: inputs (features) multiplied by this

PROBLEMS = {
    "logistic": do.problems.MixtureLogisticRegression,
    "robust": do.problems.MixtureRobustRegression,
    "mlp": do.problems.MixtureMLPClassifier,
}


# ======================================================================================================
# definitions: runs, failures, the tuning criterion, "best", margins (unit-tested on hand-made curves)
# ======================================================================================================
@dataclass
class Curves:
    """Objective values of ``R`` runs over iterations ``0..T``."""

    values: Tensor  # (T + 1, R) float64; +inf from the first iteration with a non-finite iterate or objective
    nonfinite: Tensor  # (R,) bool
    failed: Tensor  # (R,) bool: non-finite, or objective at T above the objective at 0
    evals_per_iteration: float = 1.0  # batched objective evaluations per iteration (line searches: more than 1)
    stopped_early: float = 0.0  # fraction of runs the solver stopped before T with a failure code (line search)


def make_curves(values: Tensor, evals_per_iteration: float = 1.0, stopped_early: float = 0.0) -> Curves:
    """:class:`Curves` from ``values (T + 1, R)`` whose non-finite entries mark divergence (made +inf from there)."""
    values = values.double().clone()
    bad = ~torch.isfinite(values)
    after = torch.cumsum(bad.to(torch.int64), 0) > 0
    values[after] = math.inf
    nonfinite = after[-1]
    failed = nonfinite | (values[-1] > values[0])
    return Curves(values, nonfinite, failed, evals_per_iteration, stopped_early)


def run(problem, solver, x, y0: Tensor, iterations: int) -> Curves:
    """``iterations`` iterations of ``solver`` from ``y0`` (no early stop: tol = 0), the objective at every one."""
    with torch.no_grad():
        sol = do.solve(problem, solver, x, y0, max_steps=iterations, tol=0.0, throw=False, trace=True)
    values = sol.trace.double().clone()  # (T + 1, R); the loop keeps the last finite value of a diverged run
    if values.shape[0] < iterations + 1:  # every run stopped early (line search failures): hold the last value
        values = torch.cat([values, values[-1:].expand(iterations + 1 - values.shape[0], -1)])
    diverged = sol.result == int(do.RESULTS.nonfinite)
    for i in torch.nonzero(diverged).flatten().tolist():
        values[int(sol.num_steps[i]) :, i] = math.nan
    stopped = ~diverged & (sol.result != int(do.RESULTS.max_steps_reached))
    evals = (sol.stats["f_evals"] - 1) / iterations  # after the evaluation at the start
    return make_curves(values, evals, float(stopped.double().mean()))


def tuning_score(c: Curves) -> tuple[int, float]:
    """``(failed runs, mean over the other runs of the mean objective over iterations 1..T)``; ``inf`` if all
    failed. Lower is better, compared as a tuple."""
    ok = ~c.failed
    n_failed = int(c.failed.sum())
    if not bool(ok.any()):
        return n_failed, math.inf
    return n_failed, float(c.values[1:, ok].mean())


def select(scores: list[tuple[int, float]]) -> int:
    """Index of the best grid point: fewest failed runs, then lowest criterion; ties go to the earlier point.

    >>> select([(1, 0.1), (0, 0.5), (0, 0.3), (0, 0.3)])
    2
    """
    if not scores:
        raise ValueError("select needs at least one grid point")
    return min(range(len(scores)), key=lambda k: (scores[k][0], scores[k][1], k))


def best_mask(values: dict[str, Tensor], rtol: float = TIE_RTOL) -> dict[str, Tensor]:
    """Per method, ``(R,)`` bool: its value is within ``rtol`` relative of the lowest over methods (ties count for
    all); a non-finite value is never best (if every method diverged on a run, none is best there)."""
    stack = torch.stack([v.double() for v in values.values()])  # (M, R)
    low = stack.min(0).values
    ok = torch.isfinite(stack) & (stack <= low + rtol * low.abs())
    return {name: ok[k] for k, name in enumerate(values)}


def fraction_best(values: dict[str, Tensor], rtol: float = TIE_RTOL) -> dict[str, float]:
    """Fraction of runs on which each method is best (:func:`best_mask`); fractions may add up to more than 1."""
    return {k: float(m.double().mean()) for k, m in best_mask(values, rtol).items()}


def relative_margin(baseline: Tensor, learned: Tensor) -> Tensor:
    """``(B - L) / max(B, L)`` elementwise for nonnegative values (the module docstring's margin of victory):
    0 where both are 0 or both infinite, +1 where only ``B`` is infinite, -1 where only ``L`` is."""
    b, lv = baseline.double(), learned.double()
    if bool(((b < 0) | (lv < 0)).any()):
        raise ValueError("the relative margin needs nonnegative objective values; got a negative one")
    b_inf, l_inf = torch.isinf(b), torch.isinf(lv)
    top = torch.maximum(b, lv)
    finite = ~b_inf & ~l_inf
    safe_top = torch.where(finite & (top > 0), top, torch.ones_like(top))
    m = torch.where(finite, (torch.where(finite, b, 0.0) - torch.where(finite, lv, 0.0)) / safe_top, 0.0)
    m = torch.where(b_inf & ~l_inf, 1.0, m)
    return torch.where(l_inf & ~b_inf, -1.0, m)


def margins(curves: dict[str, Curves], learned: list[str], baselines: list[str]) -> dict[str, Tensor]:
    """``(T + 1, R)`` relative margins of the best learned method (``"best learned"``) and of each learned method
    over the best hand-designed one."""
    best_base = torch.stack([curves[b].values for b in baselines]).min(0).values
    out = {"best learned": relative_margin(best_base, torch.stack([curves[m].values for m in learned]).min(0).values)}
    for m in learned:
        out[m] = relative_margin(best_base, curves[m].values)
    return out


def finite_or_none(v: Any) -> Any:
    """JSON-ready copy: tensors to lists, non-finite floats to ``None`` (strict JSON has no inf / NaN)."""
    if isinstance(v, Tensor):
        v = v.tolist()
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): finite_or_none(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [finite_or_none(x) for x in v]
    return v


def ratio(a: float, b: float) -> float:
    """``a / b`` that is ``inf`` (or NaN for 0 / 0) instead of raising on ``b = 0``."""
    return float(torch.tensor(a, dtype=torch.float64) / b)


def quantiles(values: Tensor, qs=(0.25, 0.5, 0.75)) -> Tensor:
    """``(len(qs), T + 1)`` quantiles over runs; infinite values take part (and give inf where they reach)."""
    big = 1e300
    q = torch.quantile(values.clamp_max(big), torch.tensor(qs, dtype=values.dtype), dim=1)
    return torch.where(q >= big, math.inf, q)


def summarize(c: Curves) -> dict[str, Any]:
    """Scalars and curves of one method on one set of runs (means over all runs are inf if a run diverged)."""
    T = c.values.shape[0] - 1
    fin = ~c.nonfinite
    q = quantiles(c.values)
    mean_fin = c.values[:, fin].mean(1) if bool(fin.any()) else torch.full((T + 1,), math.inf, dtype=torch.float64)
    return {
        "final_mean": float(c.values[-1].mean()),
        "mean_1_T": float(c.values[1:].mean()),
        "final_mean_finite_runs": float(mean_fin[-1]),
        "mean_1_T_finite_runs": float(mean_fin[1:].mean()),
        "final_median": float(q[1, -1]),
        "failed_fraction": float(c.failed.double().mean()),
        "nonfinite_fraction": float(c.nonfinite.double().mean()),
        "evals_per_iteration": c.evals_per_iteration,
        "stopped_early_fraction": c.stopped_early,
        "curve_mean_finite_runs": mean_fin,
        "curve_q25": q[0],
        "curve_median": q[1],
        "curve_q75": q[2],
    }


# ======================================================================================================
# objectives: the families' training / test sets and their generalization variants
# ======================================================================================================
def _map_context(x: Any, fn) -> Any:
    return dataclasses.replace(x, **{f.name: fn(f.name, getattr(x, f.name)) for f in dataclasses.fields(x)})


def scale_inputs(x: Any, scale: float) -> Any:
    """The context with its inputs (``features`` / ``inputs``) multiplied by ``scale`` (targets, labels kept)."""
    return _map_context(x, lambda name, t: t * scale if name in ("features", "inputs") else t)


def repeat_context(x: Any, k: int) -> Any:
    """Each objective ``k`` times in a row (``repeat_interleave`` on the batch dimension)."""
    return _map_context(x, lambda name, t: t.repeat_interleave(k, 0))


def objective_set(family: str, split: str, *, seed: int, scale: float = 1.0, **kwargs):
    """``(problem, contexts)``: :func:`~doubleopt.learned.li_malik_task`'s split of a family built with ``kwargs``
    (the default family gives li_malik_task's objectives), inputs multiplied by ``scale``."""
    problem = PROBLEMS[family](**kwargs)
    contexts = problem.sample(N_TRAIN + N_TEST, seed=seed)
    lo, hi = (0, N_TRAIN) if split == "train" else (N_TRAIN, N_TRAIN + N_TEST)
    x = _map_context(contexts, lambda name, t: t[lo:hi])
    return problem, (scale_inputs(x, scale) if scale != 1.0 else x)


# ======================================================================================================
# baselines: tuning on the training objectives
# ======================================================================================================
def tune(name: str, problem, x_train, args: Args, iterations: int) -> dict[str, Any]:
    """Every grid point of baseline ``name`` on the training objectives; the chosen settings and the grid's scores."""
    spec = BASELINES[name]
    grid = spec.quick_grid if args.quick else spec.grid
    x = repeat_context(x_train, args.tune_starts)
    y0 = problem.init(x, generator=generator(args.tune_seed))
    start = time.perf_counter()
    scores = [tuning_score(run(problem, spec.build(s), x, y0, iterations)) for s in grid]
    k = select(scores)
    return {
        "chosen": grid[k],
        "criterion": scores[k][1],
        "failed_runs": scores[k][0],
        "runs_per_point": int(y0.shape[0]),
        "grid": grid,
        "grid_failed_runs": [s[0] for s in scores],
        "grid_criterion": [s[1] for s in scores],
        "tuning_wall_s": time.perf_counter() - start,
    }


# ======================================================================================================
# learned optimizers: weights (with their record) or meta-training here
# ======================================================================================================
def ensure_registered(methods: list[str]) -> None:
    """Import the GPS / PPO modules if they exist, then refuse learned methods whose estimator is not registered."""
    for mod in ("doubleopt.learned.gps", "doubleopt.learned.ppo"):
        if importlib.util.find_spec(mod) is not None:
            importlib.import_module(mod)
    for m in methods:
        if m not in TRAINING:
            raise ValueError(f"unknown learned method {m!r} in --methods; choose from {list(TRAINING)}")
        est = TRAINING[m].method
        if est not in ESTIMATORS:
            rest = [k for k in TRAINING if k != m]
            raise ValueError(
                f"learned method {m!r} needs the meta-training estimator {est!r}, which is not registered "
                f"(registered: {sorted(ESTIMATORS)}); run the study without it: --methods {' '.join(rest)}"
            )


def weight_specs(args: Args) -> dict[str, str]:
    """method -> weights name or path pattern (``{family}`` filled in later): ``<method>-{family}`` unless
    ``--weights METHOD=SPEC`` overrides it."""
    specs = {m: f"{m}-{{family}}" for m in TRAINING}
    for item in args.weights:
        m, sep, spec = item.partition("=")
        if not sep or m not in TRAINING:
            raise ValueError(f"--weights takes METHOD=NAME_OR_PATH with METHOD in {list(TRAINING)}, got {item!r}")
        specs[m] = spec
    return specs


def resolve_weights(spec: str) -> Path:
    """A shipped name (``doubleopt.learned.PRETRAINED``) or a ``.safetensors`` path."""
    if spec in PRETRAINED:
        return WEIGHTS_DIR / PRETRAINED[spec]
    if Path(spec).suffix == ".safetensors" and Path(spec).exists():
        return Path(spec)
    raise ValueError(
        f"no weights {spec!r}: not a shipped name ({sorted(PRETRAINED)}) nor an existing .safetensors file; "
        "pass --weights METHOD=PATH, or --retrain to meta-train here"
    )


def read_record(path: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """``(safetensors metadata, its "record" as a dict)`` of a weights file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return meta, json.loads(meta.get("record", "{}"))


def load_trained(method: str, family: str, spec: str) -> tuple[Any, dict[str, Any]]:
    """The weights of ``method`` for ``family`` and what their record says (checked against the method)."""
    tr = TRAINING[method]
    path = resolve_weights(spec.format(family=family))
    meta, record = read_record(path)
    if meta.get("arch") != tr.arch:
        raise ValueError(
            f"weights {path} hold architecture {meta.get('arch')!r}, but {method} is a {tr.arch!r} optimizer"
        )
    trained_by = (record.get("meta_config") or {}).get("method")
    if trained_by is not None and trained_by != tr.method:
        raise ValueError(f"weights {path} were trained by {trained_by!r}, but {method} is trained by {tr.method!r}")
    task = record.get("task_name")
    if task is not None and task != f"li-malik-{family}-train":
        raise ValueError(f"weights {path} were trained on {task!r}, not on li-malik-{family}-train")
    lopt = ARCHS[tr.arch](**json.loads(meta.get("config", "{}")))
    lopt.load_weights(path)
    lopt.eval()
    wall = record.get("wall_time_s")
    info = {
        "source": "weights",
        "weights": str(path),
        "command": record.get("command"),
        "wall_time_s": wall,
        "meta_steps": record.get("meta_steps"),
        "meta_config": record.get("meta_config"),
        "record": record,
    }
    return lopt, info


_FLAGS = {"unroll": "--unroll", "horizon": "--horizon", "batch": "--batch", "meta_lr": "--meta-lr", "clip": "--clip"}
_FLAGS.update({"weight_halflife": "--weight-halflife", "meta_lr_decay": "--meta-lr-decay", "stagger": "--stagger"})


def train_lopt_command(method: str, family: str, args: Args) -> str | None:
    """The ``doubleopt train-lopt`` command that trains the same weights as :func:`train_here` (same seed, settings
    and objectives; ``None`` for settings the command does not take)."""
    tr = TRAINING[method].settings(family)
    cfg = tr.quick_config if args.quick else tr.config
    flagless = set(cfg) - set(_FLAGS) - {"options", "log_loss", "second_order"}
    if set(tr.lopt) - {"hidden", "step_scale", "learn_std"} or flagless or args.seed:
        return None
    argv = ["doubleopt", "train-lopt", "--arch", tr.arch, "--task", f"li-malik-{family}", "--method", tr.method]
    argv += ["--meta-steps", str(tr.quick_meta_steps if args.quick else tr.meta_steps)]
    argv += [a for k, v in cfg.items() if k in _FLAGS for a in (_FLAGS[k], str(v))]
    argv += [f"--{k.replace('_', '-')}" for k in ("log_loss", "second_order") if cfg.get(k)]
    argv += [a for k, v in cfg.get("options", {}).items() for a in ("--option", f"{k}={str(v).lower()}")]
    argv += ["--hidden", str(tr.lopt["hidden"])] if "hidden" in tr.lopt else []
    argv += ["--step-scale", str(tr.lopt["step_scale"])] if "step_scale" in tr.lopt else []
    argv += ["--fixed-std"] if tr.lopt.get("learn_std") is False else []
    argv += ["--seed", str(args.train_seed), "--threads", str(args.threads), "--out", f"runs/{method}-{family}"]
    return shlex.join(argv)


def train_here(method: str, family: str, args: Args) -> tuple[Any, dict[str, Any]]:
    """Meta-train ``method`` on the family's training objectives with the settings of :data:`TRAINING` (timed)."""
    tr = TRAINING[method].settings(family)
    task = li_malik_task(family, "train", seed=args.seed)
    seed_all(args.train_seed)  # the initial weights come from the global generator: the same for every method
    lopt = ARCHS[tr.arch](**tr.lopt)
    cfg = MetaConfig(method=tr.method, seed=args.train_seed, **(tr.quick_config if args.quick else tr.config))
    steps = tr.quick_meta_steps if args.quick else tr.meta_steps
    trainer = MetaTrainer(lopt, task, cfg)
    start = time.perf_counter()
    meta_train(trainer, steps, progress=sys.stderr.isatty())
    wall = time.perf_counter() - start
    lopt.eval()
    record = {
        "command": "doubleopt bench rl_optimizer -- "
        + shlex.join(["--retrain", "--methods", method, "--families", family] + (["--quick"] if args.quick else [])),
        "arch": tr.arch,
        "task_name": task.name,
        "lopt_config": lopt.config(),
        "meta_config": dataclasses.asdict(cfg),
        "meta_steps": trainer.meta_step,
        "skipped_meta_steps": trainer.skipped,
        "trajectories": trainer.trajectories,
        "threads": torch.get_num_threads(),
        "wall_time_s": wall,
        "final_meta_loss_mean_last_25": sum(trainer.losses[-25:]) / max(1, len(trainer.losses[-25:])),
        "estimator_counters": estimator_counters(trainer),
        "train_lopt_command": train_lopt_command(method, family, args),
        "torch": torch.__version__,
    }
    info = {"source": "retrained", "weights": None, **{k: record[k] for k in ("command", "wall_time_s", "meta_steps")}}
    info.update(meta_config=record["meta_config"], record=record)
    if args.save_weights:
        path = Path(args.save_weights) / f"{method}-{family}.safetensors"
        lopt.save_weights(path, metadata={"record": record})
        info["weights"] = str(path)
    return lopt, info


# ======================================================================================================
# one family: tune, train / load, evaluate, compare
# ======================================================================================================
def settings_text(settings: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in settings.items())


def study_family(family: str, args: Args, specs: dict[str, str]) -> dict[str, Any]:
    T = args.iterations
    problem, x_train = objective_set(family, "train", seed=args.seed)
    _, x_test = objective_set(family, "test", seed=args.seed)
    y0 = problem.init(x_test, generator=generator(args.start_seed))

    print(f"[{family}] tuning the baselines on {N_TRAIN} training objectives ...", flush=True)
    tuning = {b: tune(b, problem, x_train, args, T) for b in BASELINES}
    for b, t in tuning.items():
        print(f"  {b}: {settings_text(t['chosen'])} (criterion {t['criterion']:.4g}, {t['failed_runs']} failed)")

    learned, training = {}, {}
    for m in args.methods:
        lopt, info = train_here(m, family, args) if args.retrain else load_trained(m, family, specs[m])
        learned[m], training[m] = lopt, info
        wall = info["wall_time_s"]
        print(f"  {TRAINING[m].label}: {info['source']}, {'?' if wall is None else f'{wall:.0f}'} s", flush=True)

    solvers = {b: BASELINES[b].build(tuning[b]["chosen"]) for b in BASELINES}
    solvers.update({m: learned[m].as_solver() for m in learned})
    curves = {name: run(problem, s, x_test, y0, T) for name, s in solvers.items()}
    finite_values = torch.cat([c.values[torch.isfinite(c.values)] for c in curves.values()])
    if bool((finite_values < 0).any()):
        raise ValueError(f"family {family!r} produced a negative objective; the relative margin assumes f >= 0")

    checkpoints = [T // 4, T // 2, T]
    best = {str(t): fraction_best({n: c.values[t] for n, c in curves.items()}) for t in checkpoints}
    marg = margins(curves, list(learned), list(BASELINES)) if learned else {}
    best_base = torch.stack([curves[b].values for b in BASELINES]).min(0).values
    raw = {}
    if learned:
        raw = best_base[-1] - torch.stack([curves[m].values for m in learned]).min(0).values[-1]
    return {
        "tuning": tuning,
        "training": training,
        "methods": {n: summarize(c) for n, c in curves.items()},
        "fraction_best": best,
        "margin": {
            "curve_mean": {k: v.mean(1) for k, v in marg.items()},
            "final_per_objective": {k: v[-1] for k, v in marg.items()},
            "final_raw_difference_best": raw,
            "learned_wins_fraction_final": {k: float((v[-1] > 0).double().mean()) for k, v in marg.items()},
        },
        "generalization": generalization(family, args, learned, solvers["GD"], tuning["GD"]["chosen"]),
        "eval_cost": eval_cost(family, args, learned, tuning["GD"]["chosen"]),
        "_curves": curves,  # for the plots (not written)
        "_margins": marg,
    }


def generalization(family: str, args: Args, learned: dict[str, Any], gd, gd_settings) -> list[dict[str, Any]]:
    """Rows: each learned optimizer (trained on the default family) on unseen objectives vs re-tuned GD."""
    long_T = 20 if args.quick else args.long_iterations
    variants = [(name, kw, 1.0, args.iterations) for name, kw in DIMENSION_VARIANTS[family]]
    variants += [(f"inputs x{SCALE:g}", {}, SCALE, args.iterations), (f"{long_T} iterations", {}, 1.0, long_T)]
    rows = []
    for name, kw, scale, T in variants:
        common = dict(seed=args.seed, scale=scale, **kw)
        problem, x_train = objective_set(family, "train", **common)
        _, x_test = objective_set(family, "test", **common)
        y0 = problem.init(x_test, generator=generator(args.start_seed))
        gd_tuned = tune("GD", problem, x_train, args, T)
        gd_curves = run(problem, BASELINES["GD"].build(gd_tuned["chosen"]), x_test, y0, T)
        g = summarize(gd_curves)
        for m, lopt in {"GD": None, **learned}.items():
            s = g if lopt is None else summarize(run(problem, lopt.as_solver(), x_test, y0, T))
            rows.append(
                {
                    "family": family,
                    "variant": name,
                    "dim": int(y0.shape[1]),
                    "iterations": T,
                    "method": m,
                    "settings": settings_text(gd_tuned["chosen"]) if lopt is None else "trained on the default family",
                    "failed_fraction": s["failed_fraction"],
                    "nonfinite_fraction": s["nonfinite_fraction"],
                    "final_mean_finite_runs": s["final_mean_finite_runs"],
                    "mean_1_T_finite_runs": s["mean_1_T_finite_runs"],
                    "ratio_to_gd_final": ratio(s["final_mean_finite_runs"], g["final_mean_finite_runs"]),
                    "ratio_to_gd_mean_1_T": ratio(s["mean_1_T_finite_runs"], g["mean_1_T_finite_runs"]),
                }
            )
        print(
            f"  generalization {name}: "
            + ", ".join(
                f"{r['method']} {r['ratio_to_gd_final']:.3g}x GD ({r['failed_fraction']:.0%} failed)"
                for r in rows
                if r["variant"] == name
            ),
            flush=True,
        )
    return rows


def eval_cost(family: str, args: Args, learned: dict[str, Any], gd_settings) -> dict[str, Any]:
    """Wall time of ``cost_batch`` objectives solved as one batch, learned optimizers vs tuned GD (same process)."""
    batch = 50 if args.quick else args.cost_batch
    T = args.iterations
    problem = PROBLEMS[family]()
    x = problem.sample(batch, seed=args.seed + 7919)
    y0 = problem.init(x, generator=generator(args.start_seed + 1))
    policy = next((m for m in ("policy-gps", *args.methods) if m in learned and TRAINING[m].arch == "policy"), None)
    timed = {"GD": BASELINES["GD"].build(gd_settings)}
    note = ""
    if policy is None:
        timed["policy (untrained)"] = PolicyOptimizer().as_solver()
        note = "no trained policy in --methods: an untrained PolicyOptimizer (its cost does not depend on the weights)"
    timed.update({m: lopt.as_solver() for m, lopt in learned.items()})

    def solve(s):
        with torch.no_grad():
            return do.solve(problem, s, x, y0, max_steps=T, tol=0.0, throw=False)

    repeats = 2 if args.quick else args.cost_repeats
    seconds = {name: time_call(lambda s=s: solve(s), warmup=1, repeats=repeats).median for name, s in timed.items()}
    main_policy = policy or "policy (untrained)"
    return {
        "batch": batch,
        "iterations": T,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "median_s": seconds,
        "ratio_to_gd": {k: ratio(v, seconds["GD"]) for k, v in seconds.items()},
        "policy": main_policy,
        "policy_ratio_to_gd": ratio(seconds[main_policy], seconds["GD"]),
        "note": note,
    }


# ======================================================================================================
# the table (rendered from the JSON), goals, plots
# ======================================================================================================
def label(name: str) -> str:
    return TRAINING[name].label if name in TRAINING else name


def fmt(v: Any, spec: str = ".4g") -> str:
    if v is None:  # a non-finite number in the JSON (an objective mean is non-finite only when a run diverged)
        return "n/a"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def diverged_if_none(v: Any) -> Any:
    return "diverged" if v is None else v


def main_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (family, method) from the results JSON (the table of all methods and families)."""
    rows = []
    for family, fam in data["families"].items():
        T = data["iterations"]
        for name, s in fam["methods"].items():
            if name in fam["tuning"]:
                kind, settings = "hand-designed", settings_text(fam["tuning"][name]["chosen"])
                wall = fam["tuning"][name]["tuning_wall_s"]
            else:
                info = fam["training"][name]
                kind, wall = "learned", info["wall_time_s"]
                method = (info.get("meta_config") or {}).get("method", "?")
                settings = f"{info['source']}, {info['meta_steps']} meta-steps of {method}"
            row = {
                "family": family,
                "method": label(name),
                "kind": kind,
                "settings": settings,
                f"mean f at {T}": diverged_if_none(s["final_mean"]),
                f"mean f over 1..{T}": diverged_if_none(s["mean_1_T"]),
                "failed": s["failed_fraction"],
            }
            for t, fr in fam["fraction_best"].items():
                row[f"best at {t}"] = fr[name]
            row["f evals / iteration"] = s["evals_per_iteration"]
            row["training (learned) / tuning (baselines) wall s"] = wall
            rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(none)\n"
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "|".join("---" for _ in keys) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def render(data: dict[str, Any]) -> str:
    """``table.md``: every table of the study, from the results JSON alone."""
    a, c = data["args"], data["conditions"]
    out = [
        "# Learning to optimize (Li & Malik 2017): learned vs tuned hand-designed optimizers\n",
        f"Command: `{data['command']}`. {c['torch_threads']} torch thread(s), torch {c['torch']}, "
        f"{c['cpu_count']} CPUs ({c.get('note', '')}). Objectives: {data['n_train']} training / {data['n_test']} test "
        f"per family (seed {a['seed']}), one random start per test objective (seed {a['start_seed']}), "
        f"{data['iterations']} iterations. Study wall time {data['study_wall_s']:.0f} s.\n",
        "## All methods and families\n",
        "Mean over the test objectives ('diverged': a run became non-finite); 'failed': fraction of runs that "
        "became non-finite or ended above their start; 'best at t': fraction of test objectives on which the method "
        f"is lowest at iteration t (ties within {TIE_RTOL:g} relative count for all).\n",
        markdown(main_rows(data)),
        "## Margin of victory of the best learned optimizer over the best hand-designed one\n",
        "M = (B - L) / max(B, L) per test objective at the last iteration (positive: a learned optimizer is lower).\n",
    ]
    mrows = []
    for family, fam in data["families"].items():
        mg = fam["margin"]
        for k, wins in mg["learned_wins_fraction_final"].items():
            vals = [v for v in mg["final_per_objective"][k] if v is not None]
            mrows.append(
                {
                    "family": family,
                    "learned": label(k),
                    "mean M": sum(vals) / max(1, len(vals)),
                    "fraction of objectives won": wins,
                }
            )
    out += [
        markdown(mrows),
        "## Generalization (trained on the default family; GD re-tuned on each variant)\n",
        "Means over the runs that stayed finite; ratios are to tuned GD's.\n",
    ]
    grows = []
    for fam in data["families"].values():
        for r in fam["generalization"]:
            grows.append(
                {
                    "family": r["family"],
                    "variant": r["variant"],
                    "dim": r["dim"],
                    "iterations": r["iterations"],
                    "method": label(r["method"]),
                    "failed": r["failed_fraction"],
                    "non-finite": r["nonfinite_fraction"],
                    "mean f at end": diverged_if_none(r["final_mean_finite_runs"]),
                    "ratio to GD at end": r["ratio_to_gd_final"],
                    "ratio to GD, mean over iterations": r["ratio_to_gd_mean_1_T"],
                }
            )
    out += [markdown(grows), "## Evaluation cost (one batch, no gradient tape; median wall time)\n"]
    crows = []
    for family, fam in data["families"].items():
        ec = fam["eval_cost"]
        for k, s in ec["median_s"].items():
            crows.append(
                {
                    "family": family,
                    "method": label(k),
                    "objectives": ec["batch"],
                    "iterations": ec["iterations"],
                    "median s": s,
                    "ratio to GD": ec["ratio_to_gd"][k],
                }
            )
    out += [
        markdown(crows),
        "## Goals (issue 15)\n",
        markdown([{"goal": k, "value": v} for k, v in data["goals"].items()]),
    ]
    return "\n".join(out)


def goals(families: dict[str, dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    """The issue's goals, for the GPS (and PPO) policies present."""
    g: dict[str, Any] = {}
    for m in ("policy-gps", "policy-ppo", "policy-tbptt"):
        if m not in methods:
            continue
        beats = []
        for family, fam in families.items():
            s = fam["methods"]
            for b in ("GD", "Momentum", "NCG"):
                beats.append(s[m]["final_mean"] < s[b]["final_mean"] and s[m]["mean_1_T"] < s[b]["mean_1_T"])
            g[f"{m} vs L-BFGS at T ({family}): ratio of means"] = ratio(s[m]["final_mean"], s["L-BFGS"]["final_mean"])
        g[f"{m} below GD, momentum and NCG (at T and mean over 1..T) on every family"] = all(beats)
    for m, limit in (("policy-gps", 600.0), ("policy-ppo", 1200.0)):
        if m in methods:
            walls = [fam["training"][m]["wall_time_s"] for fam in families.values()]
            g[f"{m} training wall s per family (goal < {limit:.0f})"] = walls
            g[f"{m} training under {limit:.0f} s on every family"] = all(w is not None and w < limit for w in walls)
    ratios = {f: fam["eval_cost"]["policy_ratio_to_gd"] for f, fam in families.items()}
    g["policy evaluation cost / GD (goal < 5)"] = ratios
    g["policy evaluation cost under 5x GD on every family"] = all(r < 5 for r in ratios.values())
    return g


COLORS = {
    "GD": "C0",
    "Momentum": "C1",
    "NCG": "C2",
    "L-BFGS": "C7",
    "Adam": "k",
    "lstm-tbptt": "C3",
    "mlp-tbptt": "C4",
    "policy-tbptt": "C5",
    "policy-gps": "C6",
    "policy-ppo": "C8",
}


def plot_family(family: str, result: dict[str, Any], T: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), constrained_layout=True)
    positive = all(bool((c.values[torch.isfinite(c.values)] > 0).all()) for c in result["_curves"].values())
    for name, c in result["_curves"].items():
        s = result["methods"][name]
        lo, hi = (
            s[k].nan_to_num(nan=math.nan, posinf=math.nan).tolist() for k in ("curve_q25", "curve_q75")
        )  # inf: a gap
        it = list(range(T + 1))
        n_bad = int(c.nonfinite.sum())
        lab = label(name) + (f" ({n_bad} non-finite)" if n_bad else "")
        lw = 2.0 if name in TRAINING else 1.2
        ax.plot(it, s["curve_mean_finite_runs"].tolist(), color=COLORS.get(name), lw=lw, label=lab)
        ax.fill_between(it, lo, hi, color=COLORS.get(name), alpha=0.12)
    if positive:
        ax.set_yscale("log")
    n_runs = next(iter(result["_curves"].values())).values.shape[1]
    ax.set(
        xlabel="iteration",
        ylabel="objective (mean; band: interquartile range)",
        title=f"{family}: {n_runs} held-out objectives, tuned baselines vs learned optimizers",
    )
    ax.legend(fontsize=7, ncol=2)
    return fig


def plot_margins(results: dict[str, dict[str, Any]], T: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fams = [f for f, r in results.items() if r["_margins"]]
    fig, axes = plt.subplots(
        2, max(1, len(fams)), figsize=(4.6 * max(1, len(fams)), 7), squeeze=False, constrained_layout=True
    )
    for j, f in enumerate(fams):
        marg = results[f]["_margins"]
        for k, v in marg.items():
            axes[0, j].plot(
                list(range(T + 1)),
                v.mean(1).tolist(),
                color=COLORS.get(k, "k"),
                lw=2.2 if k == "best learned" else 1.0,
                ls="-" if k == "best learned" else "--",
                label=label(k),
            )
        axes[0, j].axhline(0, color="grey", lw=0.8)
        axes[0, j].set(title=f"{f}: mean margin vs best hand-designed", xlabel="iteration", ylabel="mean M")
        final = marg["best learned"][-1].sort().values
        colors = ["C2" if m > 0 else "C3" for m in final.tolist()]
        axes[1, j].bar(list(range(len(final))), final.tolist(), color=colors, width=1.0)
        axes[1, j].axhline(0, color="grey", lw=0.8)
        axes[1, j].set(
            title=f"{f}: per test objective at iteration {T}",
            xlabel="test objective (sorted)",
            ylabel="M = (B - L) / max(B, L)",
            ylim=(-1.05, 1.05),
        )
    if fams:
        axes[0, 0].legend(fontsize=7)
    return fig


# ======================================================================================================
# main
# ======================================================================================================
def check_args(args: Args, specs: dict[str, str]) -> None:
    """Refuse unknown families, a --seed the loaded weights were not trained with, and missing weight files
    (before any work starts)."""
    unknown = sorted(set(args.families) - set(FAMILIES))
    if unknown:
        raise ValueError(f"unknown families {unknown}; choose from {list(FAMILIES)}")
    if not args.retrain and args.methods and args.seed != 0:
        raise ValueError(
            f"--seed {args.seed} draws other objective sets than the ones the weights were trained on (train-lopt's "
            "li-malik-* tasks use seed 0): held-out objectives could be training ones; use --retrain with --seed"
        )
    if not args.retrain:  # every weights file exists before any work starts
        for f in args.families:
            for m in args.methods:
                resolve_weights(specs[m].format(family=f))


def save_plots(results: dict[str, dict[str, Any]], args: Args) -> Path:
    """One plot per family and the margins plot, into ``--img-dir``."""
    img = Path(args.img_dir)
    img.mkdir(parents=True, exist_ok=True)
    import matplotlib.pyplot as plt

    for f, r in results.items():
        fig = plot_family(f, r, args.iterations)
        fig.savefig(img / f"rl_optimizer_{f}.png", dpi=110)
        plt.close(fig)
    fig = plot_margins(results, args.iterations)
    fig.savefig(img / "rl_optimizer_margin.png", dpi=110)
    plt.close(fig)
    return img


def main(argv=None):
    args = parse_args(Args, argv)
    out = Path(args.out)
    if args.render_only:
        data = json.loads((out / "results.json").read_text())
        (out / "table.md").write_text(render(data))
        print(f"rendered {out / 'table.md'}")
        return data
    if args.quick:
        args.retrain, args.iterations = True, 10
        if args.out == DEFAULT_OUT:
            args.out = QUICK_OUT
        args.img_dir = args.out
    ensure_registered(args.methods)
    specs = weight_specs(args)
    check_args(args, specs)
    set_threads(args.threads)
    seed_all(args.train_seed)  # the explicit streams (objectives, starts, tuning) are derived: see Args
    started = conditions(dtype="float32")
    given = sys.argv[1:] if argv is None else list(argv)
    command = "doubleopt bench rl_optimizer" + (" -- " + shlex.join(given) if given else "")

    # ---- every family: tune the baselines, load or train the learned optimizers, run them all ----
    start = time.perf_counter()
    results = {f: study_family(f, args, specs) for f in args.families}

    # ---- report ----
    report = Report("rl_optimizer", out_dir=args.out)
    families = {f: {k: v for k, v in r.items() if not k.startswith("_")} for f, r in results.items()}
    data = {
        "command": command,
        "args": dataclasses.asdict(args),
        "conditions": started,
        "iterations": args.iterations,
        "n_train": N_TRAIN,
        "n_test": N_TEST,
        "definitions": {
            "criterion": "mean over training runs of the mean objective over iterations 1..T",
            "failure": "iterate or objective non-finite at some iteration, or objective at T above the start",
            "selection": "fewest failed training runs, then lowest criterion over the other runs; ties: first point",
            "best": f"within {TIE_RTOL:g} relative of the lowest value over methods; non-finite never best",
            "margin": "M = (B - L) / max(B, L), B / L: lowest hand-designed / learned objective per test objective",
            "grids": {b: BASELINES[b].quick_grid if args.quick else BASELINES[b].grid for b in BASELINES},
            "training": {m: dataclasses.asdict(TRAINING[m]) for m in args.methods},
        },
        "families": families,
        "goals": goals(families, args.methods),
    }
    data["study_wall_s"] = time.perf_counter() - start
    data = finite_or_none(data)
    for row in main_rows(data):
        report.add_row(**row)
    path = report.save(data)
    (path / "table.md").write_text(render(data))
    img = save_plots(results, args)
    print(render(data))
    print(f"results in {path}, plots in {img}")
    return data


if __name__ == "__main__":
    main()
