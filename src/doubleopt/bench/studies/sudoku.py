"""OptNet Sudoku (Amos & Kolter 2017, section 5.2) on 4x4 boards: learn the rules as equality constraints.

A board is one-hot, z in R^{4x4x4} (cell (r, c) holds digit k iff z[r, c, k] = 1). The OptNet layer is

    z*(puzzle) = argmin_z  1/2 eps ||z||^2 - puzzle' z   s.t.  A z = b,  z >= 0,

with the puzzle's one-hot hints as the linear term, a small eps (the paper's Q = 0.1 I) and the equality
constraints A (p x 64) LEARNED from (puzzle, solution) pairs; b = A exp(log_z0) with a learned z0 > 0 keeps
the constraints feasible (as in the OptNet code). Nothing tells the layer the rules of Sudoku: they must
end up in A. Baseline: an MLP of about the same number of parameters (64 -> hidden -> 64, cross-entropy per
cell). Metric: board accuracy (all 16 cells right, argmax over digits) on held-out puzzles.

Also reported: a much larger MLP (512 hidden units) to show the gap is not a matter of size.

Puzzles come from a seeded, scikit-free generator: all 288 valid 4x4 grids are enumerated, hints are removed
in random order while the solution stays unique (checked against all 288 grids), down to a random number of
hints; test puzzles never occur in the training set. The OptNet layer is trained with Adam and with the
pretrained learned optimizers (``--optimizers adam lstm-digits mlp-digits``: do.learned.TorchOptimizer +
do.learned.load_pretrained, meta-trained on a digits MLP, used as they are).

Run: doubleopt bench sudoku [-- --quick]; writes bench_results/sudoku/{results.json,table.md,sudoku.png}.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import torch
from torch import nn

import doubleopt as do
from doubleopt.bench import Report, conditions, generator, parse_args, seed_all, set_threads

TRAINERS = ("adam", "lstm-digits", "mlp-digits")  # the OptNet layer's default trainers (--optimizers)


@dataclass
class Args:
    """OptNet Sudoku (4x4): a QP layer that learns the rules as equality constraints vs MLP baselines.

    What is compared: board accuracy (all 16 cells right) on held-out puzzles that never occur in the training
    set, for the OptNet layer trained by Adam and by pretrained learned optimizers, against an MLP of about the
    same number of parameters and a much larger MLP (``--mlp-big-hidden``), all trained with Adam. Every run
    sees the same data, in the same batch order (one shuffle stream, the same for every run), from a cold start
    (random initialization); float64, ``--threads`` threads. The OptNet layer's interior point solves to the KKT
    tolerance ``--qp-tol``; failed solves are counted. Accuracy is the published figure; wall times are
    recorded but not compared.

    Seeds (all from ``--seed``, set once at the top of ``main``): the global generators (``seed_all``), the
    puzzles (``seed``), the OptNet layer's initial A (``seed + 1``, the same for every trainer), the batch
    order of every run (``seed + 2``), the matched MLP's initial weights (``seed + 3``) and the large MLP's
    (``seed + 4``).
    """

    n_train: int = 1000  # training puzzles
    n_test: int = 500  # held-out puzzles (none of them in the training set)
    min_hints: int = 4  # fewest hints a puzzle keeps (4 is the minimum for a unique 4x4 solution)
    max_hints: int = 10  # most hints a puzzle keeps
    p: int = 40  # learned equality constraints (rows of A); the true rules have rank 40 on 4x4 boards
    eps: float = 0.1  # Q = eps I (the paper's Q penalty)
    epochs: int = 40  # passes over the training set (OptNet)
    mlp_epochs: int = 300  # passes over the training set (MLP baselines; they are cheap, so they get more)
    mlp_big_hidden: int = 512  # hidden width of a second, much larger MLP baseline (0: skip it)
    batch: int = 100  # puzzles per step
    lr_optnet: float = 0.05  # Adam learning rate of the OptNet layer
    lr_mlp: float = 0.003  # Adam learning rate of the MLP baseline
    qp_tol: float = 1e-7  # KKT tolerance of the layer's interior point
    optimizers: list[str] = field(default_factory=lambda: list(TRAINERS))  # "adam" and/or do.learned.PRETRAINED names
    lopt_lr: float = 1.0  # update multiplier of the learned optimizers (1: the update as meta-trained)
    threads: int = 1  # torch threads
    seed: int = 0  # data and initialization seed
    quick: bool = False  # seconds-long smoke run
    out: str = "bench_results/sudoku"  # output folder


# ---- data: all 4x4 grids, puzzles with unique solutions ----------------------------------------------------


def all_grids() -> torch.Tensor:
    """The 288 valid 4x4 Sudoku grids, ``(288, 16)`` digits 0..3, by backtracking over the cells."""
    grids, g = [], [0] * 16

    def ok(cell: int, k: int) -> bool:
        r, c = divmod(cell, 4)
        br, bc = r - r % 2, c - c % 2
        peers = [4 * r + j for j in range(c)] + [4 * i + c for i in range(r)]
        peers += [4 * i + j for i in (br, br + 1) for j in (bc, bc + 1) if 4 * i + j < cell]
        return all(g[q] != k for q in peers)

    def fill(cell: int) -> None:
        if cell == 16:
            grids.append(list(g))
            return
        for k in range(4):
            if ok(cell, k):
                g[cell] = k
                fill(cell + 1)

    fill(0)
    return torch.tensor(grids)


def make_puzzles(n: int, grids: torch.Tensor, min_hints: int, max_hints: int, generator: torch.Generator):
    """``n`` puzzles ``(n, 16)`` (digit, or -1 for an empty cell) with a unique solution, and the solutions.

    Uniqueness is exact: ``masks[cell][k]`` is the set (a bitmask over the 288 grids) of grids with digit
    ``k`` at ``cell``; the grids consistent with a set of hints are the AND of their masks.
    """
    G = grids.tolist()
    masks = [[sum(1 << i for i, g in enumerate(G) if g[cell] == k) for k in range(4)] for cell in range(16)]
    everything = (1 << len(G)) - 1
    choice = torch.randint(len(G), (n,), generator=generator).tolist()
    targets = torch.randint(min_hints, max_hints + 1, (n,), generator=generator).tolist()
    puzzles, solutions = [], []
    for j in range(n):
        sol = G[choice[j]]
        keep = set(range(16))
        for cell in torch.randperm(16, generator=generator).tolist():
            if len(keep) <= targets[j]:
                break
            consistent = everything
            for c in keep - {cell}:
                consistent &= masks[c][sol[c]]
            if consistent.bit_count() == 1:  # still a unique solution without this hint
                keep.discard(cell)
        puzzles.append([sol[c] if c in keep else -1 for c in range(16)])
        solutions.append(sol)
    return torch.tensor(puzzles), torch.tensor(solutions)


def one_hot(boards: torch.Tensor) -> torch.Tensor:
    """``(B, 16)`` digits (-1 = empty) -> ``(B, 64)`` one-hot (an empty cell is all zeros)."""
    oh = torch.nn.functional.one_hot(boards.clamp_min(0), 4).double()
    return (oh * (boards >= 0)[..., None]).flatten(1)


def sudoku_constraints() -> torch.Tensor:
    """The true rules as equalities on the one-hot board (64 x 64, rank 40): for reference only."""
    rows = []
    idx = torch.arange(64).reshape(4, 4, 4)  # (row, col, digit)
    for r, c in itertools.product(range(4), range(4)):
        rows.append(idx[r, c, :])  # one digit per cell
    for r, k in itertools.product(range(4), range(4)):
        rows.append(idx[r, :, k])  # each digit once per row
    for c, k in itertools.product(range(4), range(4)):
        rows.append(idx[:, c, k])  # ... per column
    for br, bc, k in itertools.product((0, 2), (0, 2), range(4)):
        rows.append(idx[br : br + 2, bc : bc + 2, k].flatten())  # ... per box
    A = torch.zeros(len(rows), 64, dtype=torch.float64)
    for i, cols in enumerate(rows):
        A[i, cols] = 1.0
    return A


# ---- models -------------------------------------------------------------------------------------------------


class OptNetSudoku(nn.Module):
    """z* = argmin 1/2 eps |z|^2 - puzzle'z  s.t.  A z = A exp(log_z0), z >= 0, with A and z0 learned."""

    def __init__(self, p: int, eps: float, tol: float, generator: torch.Generator):
        super().__init__()
        f64 = torch.float64
        eye = torch.eye(64, dtype=f64)
        A = torch.rand(p, 64, generator=generator, dtype=f64)  # the OptNet code's random init
        self.qp = do.layers.QPLayer(Q=eps * eye, A=A, G=-eye, h=torch.zeros(64, dtype=f64), learnable=("A",),
                                    tol=tol, max_steps=60)
        self.log_z0 = nn.Parameter(torch.zeros(64, dtype=f64))

    def forward(self, puzzles: torch.Tensor) -> torch.Tensor:
        b = self.qp.A @ self.log_z0.exp()
        return self.qp(q=-puzzles, b=b)  # (B, 64)


def mlp_baseline(n_params: int, generator: torch.Generator, hidden: int | None = None) -> nn.Sequential:
    """64 -> hidden -> 64 with hidden chosen so the parameter count is about ``n_params`` (or given).

    Initialized as ``nn.Linear`` does by default (weights and biases uniform in +-1/sqrt(fan_in)), drawn from
    ``generator`` instead of torch's global generator.
    """
    hidden = hidden or max(1, round((n_params - 64) / 129))
    mlp = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 64)).double()
    with torch.no_grad():
        for layer in (mlp[0], mlp[2]):
            bound = layer.in_features**-0.5
            layer.weight.uniform_(-bound, bound, generator=generator)
            layer.bias.uniform_(-bound, bound, generator=generator)
    return mlp


def board_accuracy(scores: torch.Tensor, solutions: torch.Tensor) -> tuple[float, float]:
    """(board accuracy, cell accuracy) of ``scores (B, 64)`` (argmax over the 4 digits of each cell)."""
    pred = scores.reshape(-1, 16, 4).argmax(-1)
    right = pred == solutions
    return float(right.all(-1).double().mean()), float(right.double().mean())


@dataclass
class Data:
    """The training puzzles (one-hot ``X_tr``), their solutions (digits ``Y_tr``, one-hot ``Yoh_tr``) and the
    held-out puzzles ``X_te`` with their solutions ``Y_te``."""

    X_tr: torch.Tensor
    Y_tr: torch.Tensor
    Yoh_tr: torch.Tensor
    X_te: torch.Tensor
    Y_te: torch.Tensor


def build_data(args: Args, gen: torch.Generator) -> Data:
    """Puzzles with unique solutions; the test set holds only puzzles that never occur in the training set."""
    grids = all_grids()
    assert len(grids) == 288, len(grids)
    pz, sol = make_puzzles(args.n_train + 2 * args.n_test, grids, args.min_hints, args.max_hints, gen)
    train_keys = {tuple(r) for r in pz[: args.n_train].tolist()}
    fresh = torch.tensor([tuple(r) not in train_keys for r in pz[args.n_train :].tolist()])
    test_idx = (torch.nonzero(fresh).flatten() + args.n_train)[: args.n_test]
    Y_tr = sol[: args.n_train]
    return Data(one_hot(pz[: args.n_train]), Y_tr, one_hot(Y_tr), one_hot(pz[test_idx]), sol[test_idx])


def train(name: str, model: nn.Module, loss_fn, opt, epochs: int, data: Data, batch: int, order: torch.Generator):
    """``epochs`` passes over the training set in batches of ``batch`` (shuffled by ``order``); after each
    epoch the train/test board accuracy. Returns the curves, ``wall_s`` and ``failed_solves_total``."""
    from tqdm.auto import tqdm

    curves = {"epoch": [], "train_loss": [], "train_board_acc": [], "test_board_acc": [],
              "test_cell_acc": [], "failed_solves": []}
    t0 = time.perf_counter()
    failed_total = 0
    bar = tqdm(range(epochs), desc=name)
    for epoch in bar:
        perm = torch.randperm(len(data.X_tr), generator=order)
        losses, failed = [], 0
        for i in range(0, len(data.X_tr), batch):
            idx = perm[i : i + batch]
            out = model(data.X_tr[idx])
            loss = loss_fn(out, idx)
            opt.zero_grad()
            loss.backward()
            try:
                opt.step()
            except FloatingPointError as e:  # the learned optimizer refuses a non-finite update
                print(f"{name}: {e}; stopping this run")
                curves["diverged"] = True
                break
            losses.append(float(loss.detach()))
            if isinstance(model, OptNetSudoku):
                failed += int((~model.qp.last_solution.successful).sum())
        with torch.no_grad():
            tr_acc = board_accuracy(model(data.X_tr), data.Y_tr)[0]
            te_acc, te_cell = board_accuracy(model(data.X_te), data.Y_te)
            if isinstance(model, OptNetSudoku):
                failed += int((~model.qp.last_solution.successful).sum())
        failed_total += failed
        for k, v in zip(curves, (epoch + 1, sum(losses) / max(1, len(losses)), tr_acc, te_acc, te_cell, failed)):
            curves[k].append(v)
        bar.set_postfix(loss=f"{curves['train_loss'][-1]:.4f}", test_board=f"{te_acc:.3f}")
        if curves.get("diverged"):
            break
    curves["wall_s"] = time.perf_counter() - t0
    curves["failed_solves_total"] = failed_total
    return curves


def run_optnet(args: Args, data: Data, runs: dict) -> int:
    """The OptNet layer trained by each of ``--optimizers`` from the same initial A (seed + 1) and the same batch
    order (seed + 2); adds to ``runs`` and returns the layer's parameter count."""
    n_optnet = 0
    for which in args.optimizers:
        model = OptNetSudoku(args.p, args.eps, args.qp_tol, generator(args.seed + 1))
        n_optnet = sum(p.numel() for p in model.parameters())

        def mse(out, idx):
            return ((out - data.Yoh_tr[idx]) ** 2).mean()

        if which == "adam":
            opt = torch.optim.Adam(model.parameters(), lr=args.lr_optnet)
            label, trainer = "OptNet (Adam)", f"Adam, lr {args.lr_optnet:g}"
        else:  # a pretrained learned optimizer (load_pretrained raises a clear error for unknown names)
            lopt = do.learned.load_pretrained(which).double()
            opt = do.learned.TorchOptimizer(model.named_parameters(), lopt, lr=args.lopt_lr)
            label = f"OptNet (learned optimizer {which})"
            trainer = f"learned optimizer {which}, update multiplier {args.lopt_lr:g}"
        curves = train(label, model, mse, opt, args.epochs, data, args.batch, generator(args.seed + 2))
        runs[label] = (curves, n_optnet, trainer)
    return n_optnet


def run_mlps(args: Args, data: Data, n_optnet: int, runs: dict) -> None:
    """The MLP baselines (cross-entropy per cell, Adam): one of about the OptNet layer's size (seed + 3) and,
    unless ``--mlp-big-hidden 0``, a large one (seed + 4); the same batch order (seed + 2) as every run."""

    def ce(out, idx):
        return nn.functional.cross_entropy(out.reshape(-1, 4), data.Y_tr[idx].reshape(-1))

    trainer = f"Adam, lr {args.lr_mlp:g}"
    mlp = mlp_baseline(n_optnet or args.p * 64 + 64, generator(args.seed + 3))
    adam = torch.optim.Adam(mlp.parameters(), lr=args.lr_mlp)
    curves = train("MLP (Adam)", mlp, ce, adam, args.mlp_epochs, data, args.batch, generator(args.seed + 2))
    runs["MLP (Adam)"] = (curves, sum(p.numel() for p in mlp.parameters()), trainer)
    if args.mlp_big_hidden:
        big = mlp_baseline(0, generator(args.seed + 4), hidden=args.mlp_big_hidden)
        label = f"MLP {args.mlp_big_hidden} hidden (Adam)"
        adam = torch.optim.Adam(big.parameters(), lr=args.lr_mlp)
        curves = train(label, big, ce, adam, args.mlp_epochs, data, args.batch, generator(args.seed + 2))
        runs[label] = (curves, sum(p.numel() for p in big.parameters()), trainer)


def add_rows(report: Report, runs: dict, n_test: int) -> None:
    """One row per run: its last epoch's accuracies, epochs to 95% held-out boards, failed QP solves."""
    nan = float("nan")
    for label, (c, n_par, trainer) in runs.items():
        done = bool(c["epoch"])
        report.add_row(method=label, trainer=trainer, params=n_par, epochs=c["epoch"][-1] if done else 0,
                       train_board_acc=c["train_board_acc"][-1] if done else nan,
                       test_board_acc=c["test_board_acc"][-1] if done else nan,
                       test_boards_right=round(c["test_board_acc"][-1] * n_test) if done else None,
                       n_test=n_test,
                       test_cell_acc=c["test_cell_acc"][-1] if done else nan,
                       epochs_to_95=next((e for e, a in zip(c["epoch"], c["test_board_acc"]) if a >= 0.95), None),
                       failed_solves=c["failed_solves_total"], wall_s=c["wall_s"])


def plot(runs: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label, (c, _, _) in runs.items():
        (line,) = axes[0].plot(c["epoch"], c["test_board_acc"], "-", lw=2, label=f"{label} test")
        axes[0].plot(c["epoch"], c["train_board_acc"], "--", color=line.get_color(), label=f"{label} train")
        axes[1].loglog(c["epoch"], c["train_loss"], "-", lw=2, label=label)
    axes[0].set_xscale("log")
    axes[0].set(xlabel="epoch", ylabel="board accuracy", title="4x4 Sudoku: whole boards right", ylim=(-0.02, 1.02))
    axes[0].legend(fontsize=7)
    axes[1].set(xlabel="epoch", ylabel="training loss (OptNet: MSE, MLP: CE)", title="training loss")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def main(argv=None):
    args = parse_args(Args, argv)
    if args.quick:
        args.n_train, args.n_test, args.epochs, args.mlp_epochs, args.batch = 60, 40, 2, 5, 30
        args.mlp_big_hidden = 32
    set_threads(args.threads)
    seed_all(args.seed)  # the derived streams (seed + 1 .. + 4) are built where used; see Args
    started = conditions(dtype="float64")

    # ---- data ----
    data = build_data(args, generator(args.seed))
    rank_true = int(torch.linalg.matrix_rank(sudoku_constraints()))
    print(f"{len(data.X_tr)} training / {len(data.X_te)} held-out puzzles, hints {args.min_hints}..{args.max_hints}; "
          f"true constraint rank {rank_true}")

    # ---- the OptNet layer (each trainer), then the MLP baselines ----
    runs: dict[str, tuple[dict, int, str]] = {}
    n_optnet = run_optnet(args, data, runs)
    run_mlps(args, data, n_optnet, runs)

    # ---- report ----
    report = Report("sudoku", out_dir=args.out)
    add_rows(report, runs, len(data.X_te))
    report.save({"conditions": {**started, "n_train": len(data.X_tr), "n_test": len(data.X_te)},
                 "args": vars(args), "true_constraint_rank": rank_true,
                 "curves": {k: c for k, (c, _, _) in runs.items()}}, plot(runs))
    print(report.table())
    return report


if __name__ == "__main__":
    main()
