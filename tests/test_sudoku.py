"""The OptNet Sudoku study (doubleopt.bench.studies.sudoku): puzzle generator, representability, smoke run."""

import json

import torch

import doubleopt as do
from doubleopt.bench.registry import load_study

F64 = torch.float64


def test_generator_grids_and_unique_puzzles():
    sud = load_study("sudoku")
    grids = sud.all_grids()
    assert grids.shape == (288, 16) and len({tuple(g) for g in grids.tolist()}) == 288
    A = sud.sudoku_constraints()
    assert torch.equal(A @ sud.one_hot(grids).T, torch.ones(64, 288, dtype=F64))  # every rule holds
    assert int(torch.linalg.matrix_rank(A)) == 40
    pz, sol = sud.make_puzzles(50, grids, 4, 10, torch.Generator().manual_seed(3))
    pz2, _ = sud.make_puzzles(50, grids, 4, 10, torch.Generator().manual_seed(3))
    assert torch.equal(pz, pz2)  # seeded
    hints = (pz >= 0).sum(1)
    assert int(hints.min()) >= 4 and int(hints.max()) <= 10
    assert bool(((pz == sol) | (pz < 0)).all())  # hints agree with the solution
    consistent = ((grids[None] == pz[:, None]) | (pz[:, None] < 0)).all(-1).sum(1)
    assert bool((consistent == 1).all())  # each puzzle has exactly one solution


def test_qp_layer_with_the_true_rules_solves_every_puzzle():
    sud = load_study("sudoku")
    grids = sud.all_grids()
    pz, sol = sud.make_puzzles(40, grids, 4, 8, torch.Generator().manual_seed(4))
    A = sud.sudoku_constraints()
    keep = []  # 40 independent rows (greedy, by rank growth)
    for i in range(64):
        if int(torch.linalg.matrix_rank(A[keep + [i]])) > len(keep):
            keep.append(i)
    eye = torch.eye(64, dtype=F64)
    layer = do.layers.QPLayer(Q=0.1 * eye, A=A[keep], b=torch.ones(len(keep), dtype=F64), G=-eye,
                              h=torch.zeros(64, dtype=F64), throw=True)
    z = layer(q=-sud.one_hot(pz))
    assert sud.board_accuracy(z, sol) == (1.0, 1.0)


def test_sudoku_study_quick(tmp_path):
    sud = load_study("sudoku")
    report = sud.main(["--quick", "--out", str(tmp_path)])
    assert {r["method"] for r in report.rows} >= {"OptNet (Adam)", "MLP (Adam)"}
    data = json.loads((tmp_path / "results.json").read_text())
    curves = data["curves"]["OptNet (Adam)"]
    assert len(curves["test_board_acc"]) == 2 and curves["train_loss"][-1] < curves["train_loss"][0]
    assert (tmp_path / "sudoku.png").stat().st_size > 0
