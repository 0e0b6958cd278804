r"""Inverse optimization through a QP: learn the cost map of a QP from observed optimal decisions.

Each instance ``i`` has features ``phi_i`` (``k`` numbers, the last one a constant 1) and a decision

    z_i(W) = argmin_z 1/2 z'Qz + (W phi_i)'z   s.t.   1'z = 1,  0 <= z <= u

(one unit allocated over ``n`` options with per-option caps ``u``; ``Q``, the constraints and the features are
known). The cost vector is a linear map of the features, ``q_i = W phi_i`` with unknown ``W`` (``n x k``); a
shared cost vector is the case ``k = 1``, ``phi_i = 1``. Observed decisions come from a hidden ``W_true``
(seeded). The outer problem

    min_W  1/B sum_i || z_i(W) - z_i^obs ||^2

is solved with Adam; ``z_i(W)`` is differentiated through the QP's KKT conditions (``do.layers.QPLayer``, the
OptNet backward, which is what ``do.Implicit()`` does for QPs). Decisions of held-out instances measure whether
the learned ``W`` generalizes rather than memorizes.

Run: ``python examples/inverse_qp.py`` (a few seconds).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import doubleopt as do

F64 = torch.float64


@dataclass
class InverseQPData:
    """A known feasible set and quadratic term, features and observed decisions (train and held-out)."""

    Q: Tensor  # (n, n) positive definite, known
    A: Tensor  # (1, n) ones: the budget 1'z = 1
    b: Tensor  # (1,)
    G: Tensor  # (2n, n) [I; -I]: the caps z <= u and z >= 0
    h: Tensor  # (2n,) [u; 0]
    W_true: Tensor  # (n, k) the hidden cost map
    features: Tensor  # (B, k) training features (last column 1)
    decisions: Tensor  # (B, n) observed optimal decisions
    test_features: Tensor  # (B_test, k)
    test_decisions: Tensor  # (B_test, n)


def make_data(n: int = 8, k: int = 5, n_train: int = 128, n_test: int = 128, cap: float = 0.4, seed: int = 0):
    """A seeded instance of the inverse problem (see the module docstring)."""
    if n * cap < 1:
        raise ValueError(f"the caps must allow the budget: need n * cap >= 1, got {n} * {cap}")
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(n, n, generator=g, dtype=F64)
    Q = 0.5 * torch.eye(n, dtype=F64) + 0.5 * M @ M.T / n
    eye = torch.eye(n, dtype=F64)
    A, b = torch.ones(1, n, dtype=F64), torch.ones(1, dtype=F64)
    G, h = torch.cat([eye, -eye]), torch.cat([torch.full((n,), cap, dtype=F64), torch.zeros(n, dtype=F64)])
    W_true = torch.randn(n, k, generator=g, dtype=F64) / k**0.5

    def features(B):
        return torch.cat([torch.randn(B, k - 1, generator=g, dtype=F64), torch.ones(B, 1, dtype=F64)], dim=1)

    phi, phi_test = features(n_train), features(n_test)
    with torch.no_grad():
        z = do.qp_solve(Q, phi @ W_true.T, A, b, G, h, tol=1e-12).y
        z_test = do.qp_solve(Q, phi_test @ W_true.T, A, b, G, h, tol=1e-12).y
    return InverseQPData(Q, A, b, G, h, W_true, phi, z, phi_test, z_test)


class CostModel(nn.Module):
    """Features -> cost vector -> optimal decision: ``z(W) = argmin 1/2 z'Qz + (W phi)'z`` over the known set."""

    def __init__(self, data: InverseQPData, tol: float = 1e-10):
        super().__init__()
        n, k = data.W_true.shape
        self.cost = nn.Linear(k, n, bias=False, dtype=F64)  # W; the constant feature plays the bias
        nn.init.zeros_(self.cost.weight)  # q = 0: the start decides by Q and the constraints alone
        self.qp = do.layers.QPLayer(Q=data.Q, A=data.A, b=data.b, G=data.G, h=data.h, tol=tol, throw=True)

    def forward(self, features: Tensor) -> Tensor:
        return self.qp(q=self.cost(features))


def decision_error(model: CostModel, features: Tensor, decisions: Tensor) -> Tensor:
    """The outer loss: mean over instances of the squared distance to the observed decisions."""
    return ((model(features) - decisions) ** 2).sum(-1).mean()


def fit(data: InverseQPData, steps: int = 300, lr: float = 0.05, log_every: int = 0):
    """Adam on ``W``; returns the model and the training decision error before every step (and after the last)."""
    model = CostModel(data)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for step in range(steps + 1):
        loss = decision_error(model, data.features, data.decisions)
        history.append(float(loss.detach()))
        if log_every and step % log_every == 0:
            print(f"step {step:4d}  decision error {history[-1]:.3e}")
        if step == steps:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, history


def main():
    torch.set_num_threads(1)
    data = make_data()
    n, k = data.W_true.shape
    B = data.features.shape[0]
    print(f"inverse QP: n = {n} options, k = {k} features, {B} observed decisions, float64, 1 thread")
    start = time.perf_counter()
    model, history = fit(data, log_every=50)
    wall = time.perf_counter() - start
    with torch.no_grad():
        test0 = float(decision_error(CostModel(data), data.test_features, data.test_decisions))
        test1 = float(decision_error(model, data.test_features, data.test_decisions))
        z = model(data.test_features)
        # the budget 1'z = 1 makes q and q + c 1 equivalent: compare W modulo the all-ones direction
        P = torch.eye(n, dtype=F64) - 1.0 / n
        rel = float((P @ (model.cost.weight - data.W_true)).norm() / (P @ data.W_true).norm())
    print(f"train decision error {history[0]:.3e} -> {history[-1]:.3e} ({history[0] / history[-1]:.0f}x lower)")
    print(
        f"held-out decision error {test0:.3e} -> {test1:.3e} ({test0 / test1:.0f}x lower); "
        f"max |z - z_obs| {float((z - data.test_decisions).abs().max()):.1e}"
    )
    print(f"relative error of the learned cost map (modulo q + c 1, which leaves every decision unchanged): {rel:.2e}")
    print(f"{len(history) - 1} Adam steps in {wall:.1f} s; last QP batch: {model.qp.last_solution.summary()}")


if __name__ == "__main__":
    main()
