"""Data-parallel scaling on torch.distributed: meta-training throughput (TBPTT, ES, PES) and sharded solves with 1
and 2 processes, the communication share of a meta-step, and a scaling model built from the measured costs.

Each measurement is a ``torchrun --standalone --nproc-per-node N`` launch of this module
(``-m doubleopt.bench.studies.distributed --worker CASE``), one torch thread per process, gloo on CPU. The global
work is the same for 1 and 2 processes (TBPTT: the batch is drawn as ``--shards`` random streams in both; ES/PES:
``--pairs`` antithetic pairs), so the weights agree (checked here) and the ratio of meta-steps per second is the
speed-up.

* meta-step time: median over ``--steps`` timed meta-steps after ``--warmup`` (rank 0's clock; the processes
  synchronize at every all_reduce);
* communication share: time inside the collectives (all_reduce of the meta-gradient, the skip / restart flags)
  over the step time; it includes waiting for the slower process;
* pure all_reduce cost (2 processes, after a barrier): the meta-gradient's buffer, 8 bytes (latency alpha) and
  ``--probe-mb`` MB (bandwidth beta);
* sharded solve: ``--instances`` logistic regressions solved with L-BFGS by :func:`doubleopt.distributed.sharded_solve`
  (wall time of the sharded solve and gather; per-instance results compared between 1 and 2 processes).

Scaling model (per meta-step): ``T(N) = s + (T1 - s) / N + c(N)`` with ``T1`` the measured 1-process step time,
``s`` the part every process repeats (ES: the unperturbed unroll, ``T1 / (2 pairs + 1)``; TBPTT, PES: 0) and
``c(N) = k alpha_N + 2 (N - 1) / N * bytes / beta`` the all_reduce of the meta-gradient plus ``k - 1`` flag
all_reduces (``alpha_N = ceil(log2 N) alpha``: recursive doubling), alpha and beta from the 2-process probe
(``--alpha-us`` / ``--beta-gbs`` override them, e.g. with a cluster network's figures). The prediction for 2
processes is compared with the measurement; 8, 64 and 512 processes are predicted for strong scaling (this global
batch; the split stops where a process would get less than one stream or pair) and weak scaling (each process keeps
the 2-process share).

Run: ``doubleopt bench distributed`` (``-- --quick`` for a smoke run). Needs 2 free cores for meaningful timings.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from doubleopt.bench import Report, conditions, generator, parse_args, seed_all, set_threads
from doubleopt.distributed import Comm, exit_worker, init_from_env, shutdown


@dataclass
class Args:
    """Data-parallel scaling: meta-steps/s and sharded-solve throughput with 1 and 2 torchrun processes.

    What is compared: the same global work (the same meta-batch, streams and antithetic pairs; the same solve
    batch) run by 1 and by 2 processes, one torch thread each, gloo on CPU, on the same machine; the weights and
    solutions of the 2-process runs are checked against the 1-process run's. Meta-step time: one warm-up
    (``--warmup`` meta-steps), then the median of ``--steps`` (rank 0's clock); sharded solve: one warm-up solve,
    then one timed solve. A scaling model built from the measured costs predicts ``--predict`` processes and is
    compared with the 2-process measurement.

    Seeds: ``--seed`` seeds every worker's global generators (the learned optimizer's initial weights), the
    meta-trainer (``MetaConfig.seed``), the solve batch (``seed``) and the warm-up batch (``seed + 1``); the
    same in every process and every launch.
    """

    methods: list[str] = field(default_factory=lambda: ["tbptt", "es", "pes"])  # meta-gradient estimators timed
    processes: list[int] = field(default_factory=lambda: [1, 2])  # torchrun --nproc-per-node values measured
    task: str = "digits"  # optimizee task of train-lopt (digits: the paper's MLP on scikit-learn digits)
    batch: int = 16  # optimizees per meta-step (global)
    shards: int = 2  # TBPTT random streams (the same for every process count, so the work is identical)
    pairs: int = 8  # ES/PES antithetic pairs (global)
    unroll: int = 10  # truncation length K
    horizon: int = 100  # optimizee steps per trajectory T
    warmup: int = 2  # untimed meta-steps
    steps: int = 10  # timed meta-steps
    instances: int = 100_000  # sharded solve: logistic regressions in the batch
    features: int = 3  # sharded solve: features per logistic regression
    points: int = 40  # sharded solve: data points per logistic regression
    solve_steps: int = 50  # sharded solve: L-BFGS step budget
    probe_mb: float = 8.0  # all_reduce probe size for the bandwidth estimate (MB)
    alpha_us: float = 0.0  # scaling model latency per hop (us); 0: the measured one
    beta_gbs: float = 0.0  # scaling model bandwidth (GB/s); 0: the measured one
    predict: list[int] = field(default_factory=lambda: [2, 8, 64, 512])  # process counts the model predicts
    timeout: int = 1800  # seconds per torchrun launch
    seed: int = 0  # initial weights, meta-training streams and solve batch (the same in every process)
    worker: str = ""  # internal: the case a torchrun worker runs ("meta-<method>" or "solve")
    result: str = ""  # internal: where a worker writes its measurement (JSON)
    quick: bool = False  # smoke run: tiny sizes, seconds
    out: str = "bench_results/distributed"  # output folder


# ======================================================================================================
# worker side (inside torchrun): one case, rank 0 writes a JSON record
# ======================================================================================================
@dataclass(frozen=True)
class TimedComm(Comm):
    """A :class:`Comm` that adds the wall time spent in its collectives to ``seconds[0]``."""

    seconds: list[float] = field(default_factory=lambda: [0.0], compare=False)

    def _timed(self, fn, *a):
        start = time.perf_counter()
        try:
            return fn(*a)
        finally:
            self.seconds[0] += time.perf_counter() - start

    def sum(self, tensors):
        return self._timed(super().sum, tensors)

    def all(self, flag):
        return self._timed(super().all, flag)

    def gather(self, tensor):
        return self._timed(super().gather, tensor)

    def barrier(self):
        return self._timed(super().barrier)


def meta_worker(args: Args, comm: TimedComm, method: str) -> dict:
    from doubleopt.learned import LSTMOptimizer, make_task
    from doubleopt.learned.meta import MetaConfig, MetaTrainer

    cfg = MetaConfig(
        method=method, unroll=args.unroll, horizon=args.horizon, batch=args.batch, es_pairs=args.pairs,
        shards=args.shards if method == "tbptt" else 1, seed=args.seed,
    )  # fmt: skip
    trainer = MetaTrainer(LSTMOptimizer(), make_task(args.task), cfg, comm=comm)
    for _ in range(args.warmup):
        trainer.step()
    step_s, comm_s = [], []
    for _ in range(args.steps):
        comm.barrier()
        before, start = comm.seconds[0], time.perf_counter()
        trainer.step()
        step_s.append(time.perf_counter() - start)
        comm_s.append(comm.seconds[0] - before)
    grad_bytes = sum(p.numel() for p in trainer.lopt.parameters()) * 8  # float64 all_reduce buffer
    return {
        "case": f"meta-{method}",
        "median_step_s": statistics.median(step_s),
        "step_s": step_s,
        "comm_s": comm_s,
        "comm_fraction": sum(comm_s) / sum(step_s),
        "grad_bytes": grad_bytes + 8,  # + the loss
        "weights": str(save_weights(trainer, args.result)) if comm.is_main else None,
        "collectives_per_step": 3,  # meta-gradient (+ loss), skip flag, restart flag
        **({"allreduce": probe_allreduce(comm, grad_bytes + 8, args.probe_mb)} if comm.world > 1 else {}),
    }


def save_weights(trainer, result: str) -> Path:
    from safetensors.torch import save_file

    path = Path(result + ".safetensors")
    save_file({k: v.contiguous() for k, v in trainer.lopt.state_dict().items()}, str(path))
    return path


def probe_allreduce(comm: Comm, grad_bytes: int, probe_mb: float, repeats: int = 30) -> dict:
    """Median time of one all_reduce (both processes arrive together) for 8 bytes, the meta-gradient and a large
    buffer; alpha (latency) and beta (bandwidth) from the small and the large one."""
    out = {}
    for name, nbytes in (("8B", 8), ("grad", grad_bytes), ("large", int(probe_mb * 2**20))):
        buf = [torch.zeros(max(1, nbytes // 8), dtype=torch.float64)]
        times = []
        for _ in range(repeats):
            comm.barrier()
            start = time.perf_counter()
            comm.sum(buf)
            times.append(time.perf_counter() - start)
        out[name] = {"bytes": nbytes, "median_s": statistics.median(times)}
    alpha = out["8B"]["median_s"]
    beta = out["large"]["bytes"] * 2 * (comm.world - 1) / comm.world / max(out["large"]["median_s"] - alpha, 1e-9)
    return {**out, "alpha_s": alpha, "beta_Bps": beta}


def solve_worker(args: Args, comm: TimedComm) -> dict:
    import doubleopt as do
    from doubleopt.distributed import sharded_solve

    fam = do.problems.LogisticRegression(n_features=args.features, n_points=args.points, dtype=torch.float64)
    x = fam.sample(args.instances, generator=generator(args.seed))
    options = {"max_steps": args.solve_steps, "throw": False}
    sharded_solve(fam, do.LBFGS(), fam.sample(64, seed=args.seed + 1), comm=comm, **options)  # warm-up
    comm.barrier()
    before, start = comm.seconds[0], time.perf_counter()
    sol = sharded_solve(fam, do.LBFGS(), x, comm=comm, **options)
    wall = time.perf_counter() - start
    if comm.is_main:
        from safetensors.torch import save_file

        save_file({"y": sol.y.contiguous(), "result": sol.result}, args.result + ".safetensors")
    return {
        "case": "solve",
        "wall_s": wall,
        "comm_s": comm.seconds[0] - before,
        "instances_per_s": args.instances / wall,
        "result_counts": {str(k): int(v) for k, v in zip(*torch.unique(sol.result, return_counts=True))},
        "bytes_gathered": sum(
            getattr(sol, k).numel() * 8 for k in ("y", "value", "result", "num_steps", "stationarity")
        ),
    }


def run_worker(args: Args) -> None:
    set_threads(1)
    seed_all(args.seed)  # the initial weights of the learned optimizer come from torch's global generator
    base = init_from_env()
    comm = TimedComm(rank=base.rank, world=base.world, device=base.device, group=base.group)
    try:
        if args.worker == "solve":
            record = solve_worker(args, comm)
        else:
            record = meta_worker(args, comm, args.worker.removeprefix("meta-"))
        if comm.is_main:
            Path(args.result).write_text(json.dumps({"processes": comm.world, **record}))
    except BaseException:
        shutdown(comm)
        raise
    exit_worker(comm)


# ======================================================================================================
# harness side: launch the workers, model, report
# ======================================================================================================
def launch(args: Args, case: str, nproc: int, tmp: Path) -> dict:
    result = tmp / f"{case}-{nproc}.json"
    own = {k: v for k, v in asdict(args).items() if k not in ("worker", "result", "quick", "out")}
    argv = []
    for k, v in own.items():
        flag = "--" + k.replace("_", "-")
        argv += [flag, *map(str, v)] if isinstance(v, list) else [flag, str(v)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m",
           __spec__.name, *argv, "--worker", case, "--result", str(result)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    print(f"-- {case}, {nproc} process(es)", flush=True)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    if r.returncode != 0:
        raise RuntimeError(f"torchrun {case} with {nproc} processes failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return json.loads(result.read_text())


def allreduce_cost(nbytes: float, n: int, alpha: float, beta: float) -> float:
    """all_reduce of ``nbytes`` over ``n`` processes: ``ceil(log2 n)`` latencies ``alpha`` (recursive doubling,
    what gloo and NCCL use for small buffers; ``alpha`` is the measured 2-process time of an 8-byte all_reduce)
    plus the ring's bandwidth term ``2 (n - 1) / n * nbytes / beta``.

    >>> allreduce_cost(1e6, 1, 1e-5, 1e9), round(allreduce_cost(1e6, 2, 1e-5, 1e9), 6), allreduce_cost(0, 8, 1.0, 1.0)
    (0.0, 0.00101, 3.0)
    """
    if n == 1:
        return 0.0
    return math.ceil(math.log2(n)) * alpha + 2 * (n - 1) / n * nbytes / beta


def model_step(t1: float, serial: float, n: int, grad_bytes: float, flags: int, alpha: float, beta: float) -> float:
    """Predicted meta-step time with ``n`` processes sharing the work of a 1-process step ``t1`` whose part
    ``serial`` every process repeats, plus the meta-gradient's all_reduce and ``flags`` one-number all_reduces.

    >>> model_step(1.0, 0.0, 1, 1e3, 2, 1e-4, 1e9), round(model_step(1.0, 0.2, 2, 0.0, 2, 1e-4, 1e9), 4)
    (1.0, 0.6003)
    """
    return (
        serial
        + (t1 - serial) / n
        + allreduce_cost(grad_bytes, n, alpha, beta)
        + flags * allreduce_cost(8, n, alpha, beta)
    )


def weight_difference(a: str, b: str) -> float:
    """Largest absolute difference between two weight files (the 1-process run's and another's)."""
    from safetensors.torch import load_file

    x, y = load_file(a), load_file(b)
    return max(float((x[k] - y[k]).abs().max()) for k in x)


def serial_part(method: str, t1: float, pairs: int) -> float:
    """The part of a 1-process meta-step every process repeats: ES's unperturbed unroll (one of ``2 pairs + 1``
    equal unrolls); 0 for TBPTT and PES."""
    return t1 / (2 * pairs + 1) if method == "es" else 0.0


def max_split(method: str, args: Args) -> int:
    return args.shards if method == "tbptt" else args.pairs


def run_launches(args: Args, runs_dir: Path) -> tuple[dict[str, dict[int, dict]], dict]:
    """Every case with every process count of ``--processes`` (one torchrun launch each); the 1- and 2-process
    sharded solutions compared: ``(records by case and process count, comparison)``."""
    records = {}
    for case in [f"meta-{m}" for m in args.methods] + ["solve"]:
        records[case] = {n: launch(args, case, n, runs_dir) for n in args.processes}
    same_solution = {}
    if 1 in args.processes and 2 in args.processes:
        from safetensors.torch import load_file

        one, two = (load_file(str(runs_dir / f"solve-{n}.json.safetensors")) for n in (1, 2))
        same_solution = {
            "codes_equal": bool(torch.equal(one["result"], two["result"])),
            "max_abs_y_difference": float((one["y"] - two["y"]).abs().max()),
        }
    return records, same_solution


def meta_rows(args: Args, records: dict, alpha: float, beta: float, report: Report) -> dict:
    """One row per (method, process count): measured throughput against the model; returns the model's
    strong- and weak-scaling predictions per method."""
    model = {}
    for method in args.methods:
        runs = records[f"meta-{method}"]
        if 1 not in runs:
            continue
        t1 = runs[1]["median_step_s"]
        s = serial_part(method, t1, args.pairs)
        gb, flags = runs[1]["grad_bytes"], runs[1]["collectives_per_step"] - 1
        t2_share = s + (t1 - s) / 2  # per-process compute of the 2-process split, kept in weak scaling
        model[method] = {
            "serial_s": s,
            "strong": {
                n: model_step(t1, s, n, gb, flags, alpha, beta) for n in args.predict if n <= max_split(method, args)
            },
            "weak": {n: t2_share + allreduce_cost(gb, n, alpha, beta) + flags * allreduce_cost(8, n, alpha, beta)
                     for n in args.predict},
        }  # fmt: skip
        for n, rec in runs.items():
            predicted = model_step(t1, s, n, gb, flags, alpha, beta)
            report.add_row(
                case=f"meta-train {method}",
                processes=n,
                per_s=1 / rec["median_step_s"],  # meta-steps per second
                speedup=t1 / rec["median_step_s"],
                efficiency=t1 / (n * rec["median_step_s"]),
                comm_fraction=rec["comm_fraction"],
                model_per_s=1 / predicted,
                model_error=predicted / rec["median_step_s"] - 1,
                max_abs_difference=weight_difference(rec["weights"], runs[1]["weights"]),
            )
    return model


def solve_rows(args: Args, records: dict, same_solution: dict, alpha: float, beta: float, report: Report) -> None:
    """One row per process count of the sharded solve, against its model."""
    solve = records["solve"]
    for n, rec in solve.items():
        t1 = solve[1]["wall_s"] if 1 in solve else math.nan
        predicted = t1 / n + allreduce_cost(rec["bytes_gathered"] / 2, n, alpha, beta)  # all_gather ~ half a ring
        report.add_row(
            case="sharded solve",
            processes=n,
            per_s=rec["instances_per_s"],
            speedup=t1 / rec["wall_s"],
            efficiency=t1 / (n * rec["wall_s"]),
            comm_fraction=rec["comm_s"] / rec["wall_s"],
            model_per_s=args.instances / predicted,
            model_error=predicted / rec["wall_s"] - 1,
            max_abs_difference=0.0 if n == 1 else same_solution.get("max_abs_y_difference", math.nan),
        )


def main(argv=None):
    args = parse_args(Args, argv)
    if args.worker:
        return run_worker(args)
    if args.quick:
        args.batch, args.steps, args.warmup, args.unroll, args.horizon = 4, 2, 1, 2, 4
        args.pairs, args.instances, args.solve_steps, args.probe_mb, args.task = 2, 2000, 10, 1.0, "quadratic"
    seed_all(args.seed)  # the harness draws nothing; every worker seeds itself from --seed (run_worker)
    started = conditions(backend="gloo", torch_threads_per_process=1)
    report = Report("distributed", out_dir=args.out)
    runs_dir = Path(args.out) / "runs"  # each launch's record and weights / solutions
    runs_dir.mkdir(parents=True, exist_ok=True)

    # ---- measure: every case with 1 and 2 processes ----
    records, same_solution = run_launches(args, runs_dir)

    # ---- model: all_reduce latency and bandwidth (measured unless given), rows against the model ----
    probe = next((r["allreduce"] for case in records for r in records[case].values() if "allreduce" in r), None)
    alpha = args.alpha_us * 1e-6 if args.alpha_us > 0 else (probe["alpha_s"] if probe else 0.0)
    beta = args.beta_gbs * 1e9 if args.beta_gbs > 0 else (probe["beta_Bps"] if probe else math.inf)
    model = meta_rows(args, records, alpha, beta, report)
    solve_rows(args, records, same_solution, alpha, beta, report)

    # ---- report ----
    path = report.save(
        {
            "args": asdict(args),
            "conditions": started,
            "records": {c: {str(n): r for n, r in runs.items()} for c, runs in records.items()},
            "allreduce_model": {"alpha_s": alpha, "beta_Bps": beta, "measured": probe},
            "model": {m: {k: ({str(n): t for n, t in v.items()} if isinstance(v, dict) else v) for k, v in d.items()}
                      for m, d in model.items()},
            "sharded_solve_same_results": same_solution,
        },
        plot(args, records, model),
    )  # fmt: skip
    print(report.table())
    print(f"results in {path}")
    return report


def plot(args: Args, records: dict, model: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for method, m in model.items():
        runs = records[f"meta-{method}"]
        t1 = runs[1]["median_step_s"]
        measured = [(n, t1 / (n * r["median_step_s"])) for n, r in runs.items()]
        (line,) = axes[0].plot(*zip(*measured), "o", label=f"{method} measured")
        strong = sorted((n, t1 / (n * t)) for n, t in m["strong"].items())
        share = m["serial_s"] + (t1 - m["serial_s"]) / 2  # per-process compute in weak scaling
        weak = sorted((n, share / t) for n, t in m["weak"].items())
        if strong:
            axes[0].plot(*zip(*strong), "-", color=line.get_color(), label=f"{method} model, strong")
        axes[0].plot(*zip(*weak), ":", color=line.get_color(), label=f"{method} model, weak")
    axes[0].set(xscale="log", ylim=(0, 1.05), xlabel="processes", ylabel="parallel efficiency",
                title="meta-training")  # fmt: skip
    axes[0].legend(fontsize=7)
    solve = records["solve"]
    axes[1].plot(list(solve), [r["instances_per_s"] for r in solve.values()], "o-")
    axes[1].set(xlabel="processes", ylabel="instances / s", title=f"sharded solve ({args.instances} instances)")
    return fig


if __name__ == "__main__":
    main()
