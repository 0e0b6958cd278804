"""``doubleopt physical-train``: train a resistor network on a task, save the conductances and a plot.

    doubleopt physical-train --task iris --rule coupled --nodes 100 --steps 500 --out physical_results

Writes ``OUT/conductances.safetensors`` (atomically: temp file + rename), ``OUT/curve.json`` and
``OUT/learning_curve.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from ..cli import positive_int


def _rule(name: str, eta: float, beta: float):
    from . import CoupledLearning, EquilibriumPropagation, ExactGradient

    return {
        "coupled": CoupledLearning(eta),
        "ep": EquilibriumPropagation(beta, symmetric=True),
        "exact": ExactGradient(),
    }[name]


def _atomic_save_safetensors(tensors: dict, path: Path) -> None:
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _cmd_train(args: argparse.Namespace) -> int:
    from . import allosteric_task, iris_task, regression_task, train

    makers = {"allosteric": allosteric_task, "regression": regression_task, "iris": iris_task}
    task = makers[args.task](args.nodes, seed=args.seed)
    res = train(
        task.network,
        task.x_train,
        task.t_train,
        _rule(args.rule, args.eta, args.beta),
        steps=args.steps,
        lr=args.lr,
        eval_inputs=task.x_test,
        eval_targets=task.t_test,
        metric=task.metric,
        eval_every=max(1, args.steps // 50),
        progress=True,
    )
    out = Path(args.out)
    net = task.network
    _atomic_save_safetensors(
        {
            "k": res.k,
            "edges": net.edges,
            "sources": net.sources,
            "ground": net.ground,
            "output_pairs": net.output_pairs,
        },
        out / "conductances.safetensors",
    )
    summary = {
        "task": task.name,
        "rule": args.rule,
        "nodes": net.n_nodes,
        "edges": net.n_edges,
        "lr": args.lr,
        "steps": res.steps,
        "test_cost": res.eval_cost,
        task.metric_name or "metric": res.eval_metric,
    }
    (out / "curve.json").write_text(json.dumps(summary, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.semilogy(res.steps, np.maximum(res.eval_cost, 1e-30))
    ax.set_xlabel("step")
    ax.set_ylabel("test cost")
    ax.set_title(f"{task.name}, {args.rule}, {net.n_nodes} nodes")
    fig.savefig(out / "learning_curve.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    msg = f"{task.name}/{args.rule}: test cost {res.eval_cost[0]:.3g} -> {res.eval_cost[-1]:.3g}"
    if res.eval_metric:
        msg += f", test {task.metric_name} {res.eval_metric[-1]:.3f}"
    print(msg + f"; wrote {out}/conductances.safetensors, learning_curve.png")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "physical-train", help="train a resistor network (coupled learning / EP / exact)"
    )
    p.add_argument("--task", choices=["allosteric", "regression", "iris"], default="regression")
    p.add_argument("--rule", choices=["coupled", "ep", "exact"], default="coupled")
    p.add_argument("--nodes", type=int, default=200, help="network size")
    p.add_argument("--steps", type=positive_int, default=500)
    p.add_argument("--lr", type=float, default=30.0, help="learning rate alpha")
    p.add_argument("--eta", type=float, default=0.1, help="coupled-learning clamping strength")
    p.add_argument("--beta", type=float, default=0.1, help="EP nudging strength")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="physical_results", help="output folder")
    p.set_defaults(func=_cmd_train)
