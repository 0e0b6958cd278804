"""Fuzz and agreement runs of the QP solver's native (C) kernel (issue 17, section 2: committed, rerunnable).

1. **Kernel fuzz** (:func:`test_native_kernel_fuzz`): random QP batches of varied sizes (``n`` 2-25, ``m`` 1-50
   inequalities, plus box rows in some families), batch sizes (1-12), input dtypes (float64, float32), equality
   counts (``p`` 0-8, ``p < n``), shared or per-instance matrices, tolerances ``1e-9`` and ``1e-12``, from four
   families: strongly convex, singular ``Q`` (rank 1..n-1), LP (``Q = 0``), and random right-hand sides (which
   may be infeasible). Instances are made feasible, infeasible (two opposite rows whose bounds contradict) or
   unbounded (a recession direction ``d``: ``Qd = 0``, ``Ad = 0``, ``Gd <= 0``, ``q'd < 0``). Every batch is
   solved by ``qp_solve`` with the kernel (``QP(native=True)``) and with the PyTorch iterations only
   (``QP(native=False)``). The kernel must have run; the result codes must be the same for every instance, except
   a rare *budget split* on a degenerate instance (one path ``max_steps_reached``, the other ``successful``; the
   exact condition is stated at ``RERUN_STEPS`` below); where both are successful the objectives must agree to
   ``FTOL`` and, where ``Q`` is positive definite (one solution), the solutions to ``ZTOL``.

2. **Large agreement** (:func:`test_large_qp_agreement_with_a_high_accuracy_reference`): ``RandomQP`` batches
   (the OptNet benchmark's distribution) solved by ``qp_solve`` at its default tolerance and at ``tol=1e-12``,
   with and without the kernel, against CVXPY + Clarabel at tight tolerances: every instance must be
   ``successful`` and agree with the reference to the bounds stated in the test.

Default sizes keep ``make test`` short (a few seconds). The longer runs::

    DOUBLEOPT_FUZZ_INSTANCES=5000 .venv/bin/pytest tests/test_qp_native_fuzz.py -p no:xdist -s -k fuzz
    DOUBLEOPT_AGREEMENT_SIZE=50,100,10,128 .venv/bin/pytest tests/test_qp_native_fuzz.py -p no:xdist -s -k agreement

``DOUBLEOPT_FUZZ_INSTANCES``: how many instances the fuzz draws (default 1000); ``DOUBLEOPT_AGREEMENT_SIZE``:
``n,m,p,B`` of the agreement run (default ``50,100,10,16``). Both print a one-line tally (with ``-s``). The draws
are seeded: the same count gives the same instances.
"""

from __future__ import annotations

import math
import os
import random
from collections import Counter
from dataclasses import dataclass

import pytest
import torch

import doubleopt as do
from doubleopt.solvers import _native
from doubleopt.solvers.qp import QP

F64 = torch.float64
_OFF = os.environ.get("DOUBLEOPT_NATIVE", "1") == "0"
# skipped only where there is no C compiler (or the kernel is turned off): a compiler whose build fails is a failure
needs_native = pytest.mark.skipif(_native.compiler() is None or _OFF, reason="no C compiler: the native kernel is off")

FAMILIES = ("strongly convex", "singular Q", "LP", "random right-hand sides")
# Where both paths are successful: the objectives agree to FTOL (relative to 1 + |f|) and, where Q is positive
# definite (one solution), the solutions to ZTOL (relative to 1 + |z|). The two paths run the same iteration and
# differ by rounding (a blocked Cholesky in C, LAPACK in PyTorch); a float32 input gets its solution rounded to
# float32 (eps 1.2e-7) on the way back. Where Q is singular the optimal set can be a face, along which the two
# iterates may drift apart once rounding dominates: only the objective is compared there.
ZTOL = {F64: 1e-6, torch.float32: 1e-6}
FTOL = {F64: 1e-8, torch.float32: 1e-5}
# A budget split (one path max_steps_reached, the other successful) is accepted only as follows. On a degenerate
# instance the iterate stalls with a KKT residual just above tol (the iterates agree to rounding until then, and
# rounding decides whether and when the stopping test is met). The unfinished path, rerun with RERUN_STEPS, must then
# finish with the same objective (to FTOL) or stay stalled at a residual <= sqrt(tol); and splits must stay rarer
# than MAX_SPLIT_RATE of the instances (measured: 3 in the first 5001, all LP or near-infeasible instances).
RERUN_STEPS = 200
MAX_SPLIT_RATE = 2e-3


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}")
    return value


@dataclass
class Case:
    """One random batch: its description and ``qp_solve``'s six inputs."""

    seed: int
    family: str
    n: int
    m: int
    p: int
    B: int
    shared: bool
    boxes: bool
    dtype: torch.dtype
    tol: float
    kinds: list[str]
    tensors: tuple
    point: torch.Tensor  # (B, n): z0, strictly feasible for the "feasible" and "unbounded" instances
    direction: torch.Tensor | None  # (n,): the recession direction d of the "unbounded" instances

    def describe(self) -> str:
        return (f"seed {self.seed}: {self.family}, n={self.n} m={self.m} p={self.p} B={self.B} shared={self.shared} "
                f"boxes={self.boxes} {str(self.dtype).removeprefix('torch.')} tol={self.tol:g}")


def make_case(seed: int) -> Case:
    """The random batch number ``seed`` (deterministic)."""
    r = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=F64)

    def rand(*shape):
        return torch.rand(*shape, generator=gen, dtype=F64)

    family = r.choice(FAMILIES)
    n, m0 = r.randint(2, 25), r.randint(1, 50)
    p = r.choice([0, 0, r.randint(1, min(n - 1, 8))])
    B = r.choice([1, 2, 3, 5, 8, 12])
    shared = r.random() < 0.25
    dtype = torch.float32 if r.random() < 0.2 else F64
    tol = r.choice([1e-9, 1e-12])
    boxes = r.random() < (0.7 if family in ("singular Q", "LP") else 0.3)
    recession = family in ("singular Q", "LP") and not boxes  # build a direction d the data cannot bound
    Bm = 1 if shared else B
    # Q = M M' in small integers times a power of two, so it is exactly positive semidefinite in float32 too (a
    # rounded singular Q is refused as not PSD); with a recession direction d (integers in {-1, 0, 1}) M's columns
    # are (|d|^2 I - d d') M0, exactly orthogonal to d
    d = torch.randint(-1, 2, (n,), generator=gen).to(F64)
    if not bool(d.any()):
        d[0] = 1.0
    proj = torch.eye(n, dtype=F64) - torch.outer(d, d) / (d @ d) if recession else torch.eye(n, dtype=F64)
    if family == "LP":
        Q = torch.zeros(Bm, n, n, dtype=F64)
    else:
        rank = n if family in ("strongly convex", "random right-hand sides") else r.randint(1, n - 1)
        M = torch.randint(-3, 4, (Bm, n, rank), generator=gen).to(F64)
        if recession:
            M = (d @ d) * M - d[:, None] * (d @ M)[..., None, :]
        Q = M @ M.transpose(-1, -2)
        if family == "strongly convex" or (family == "random right-hand sides" and r.random() < 0.5):
            Q = Q + torch.eye(n, dtype=F64) * float(Q.diagonal(dim1=-2, dim2=-1).mean()) / 16
        Q = Q * 2.0 ** (r.randint(-3, 3) - round(math.log2(float(Q.abs().max()) + 1)))
    d = d / d.norm()
    # G: rows 0 and 1 opposite (an interval on one direction: where the infeasible instances contradict), then boxes
    G = randn(Bm, m0, n) @ proj
    if recession:  # G d <= 0, strictly on some rows; rows 0 and 1 stay orthogonal to d
        a = rand(Bm, m0, 1) * (rand(Bm, m0, 1) < 0.5)
        a[:, :2] = 0.0
        G = G - a * d
    if m0 >= 2:
        G[:, 1] = -G[:, 0]
    if boxes:
        eye = torch.eye(n, dtype=F64).expand(Bm, n, n)
        G = torch.cat([G, eye, -eye], dim=1)
    m = G.shape[1]
    A = randn(Bm, p, n) @ proj
    # per instance: a point z0, feasible slacks, and the kind
    z0 = randn(B, n)
    Gz0 = (G @ z0[..., None])[..., 0] if not shared else z0 @ G[0].T
    Az0 = (A @ z0[..., None])[..., 0] if not shared else z0 @ A[0].T
    h = Gz0 + rand(B, m) + 0.1
    kinds = []
    q = randn(B, n) @ proj * 10 ** r.uniform(-1, 1)
    for i in range(B):
        kind = "feasible"
        roll = r.random()
        if family == "random right-hand sides":
            h[i] = Gz0[i] + 0.7 * randn(m)  # negative slacks too: feasible or not, as it falls
            kind = "random"
        elif m0 >= 2 and roll < 0.15:
            h[i, 0], h[i, 1] = Gz0[i, 0] - 0.5, -Gz0[i, 0] - 0.5  # G_0 z <= G_0 z0 - 1/2 and >= G_0 z0 + 1/2
            kind = "infeasible"
        if recession and kind == "feasible" and roll < 0.6:
            q[i] = q[i] - d  # q'd = -1: unbounded along d (Qd = 0, Ad = 0, Gd <= 0)
            kind = "unbounded"
        kinds.append(kind)
    if shared:
        Q, G, A = Q[0], G[0], A[0]
    tensors = tuple(t.to(dtype) for t in (Q, q, A, Az0, G, h))
    if p == 0:
        tensors = (tensors[0], tensors[1], None, None, tensors[4], tensors[5])
    return Case(seed, family, n, m, p, B, shared, boxes, dtype, tol, kinds, tensors, z0, d if recession else None)


def _solve(case: Case, native: bool, max_steps: int = 50):
    return do.qp_solve(*case.tensors, tol=case.tol, throw=False, max_steps=max_steps, solver=QP(native=native))


def _objectives(case: Case, z: torch.Tensor) -> torch.Tensor:
    Q, q = case.tensors[0].double(), case.tensors[1].double()
    z = z.double()
    Qz = z @ Q.T if Q.dim() == 2 else (Q @ z[..., None])[..., 0]
    return 0.5 * (z * Qz).sum(-1) + (q * z).sum(-1)


def _positive_definite(case: Case) -> torch.Tensor:
    Q = case.tensors[0].double()
    ev = torch.linalg.eigvalsh(Q if Q.dim() == 3 else Q.expand(case.B, case.n, case.n))
    return ev[..., 0] > 1e-8 * (1.0 + ev[..., -1])


def compare(case: Case) -> tuple[list[str], dict]:
    """Solve ``case`` with and without the kernel: the mismatches (as text) and statistics (see ZTOL, FTOL and
    the budget splits above)."""
    sols = {True: _solve(case, True), False: _solve(case, False)}
    nat, ref = sols[True], sols[False]
    problems = []
    if not nat.stats.get("native") or "native" in ref.stats:
        problems.append(f"{case.describe()}: the kernel did not run (stats {nat.stats} / {ref.stats})")
    ok = int(do.RESULTS.successful)
    budget = int(do.RESULTS.max_steps_reached)
    stats = {"codes": Counter(do.RESULTS(c).name for c in ref.result.tolist()), "dz": 0.0, "df": 0.0,
             "steps": int((nat.num_steps - ref.num_steps).abs().max()), "splits": []}
    f = {native: _objectives(case, sol.y) for native, sol in sols.items()}
    rerun = {}
    for i, (a, b) in enumerate(zip(nat.result.tolist(), ref.result.tolist())):
        where = f"{case.describe()}, instance {i} ({case.kinds[i]})"
        if a == b:
            continue
        if {a, b} != {ok, budget}:
            problems.append(f"{where}: kernel {do.RESULTS(a).name}, PyTorch {do.RESULTS(b).name}")
            continue
        late = a == budget  # the path that did not finish: True the kernel, False PyTorch
        if late not in rerun:
            rerun[late] = _solve(case, late, RERUN_STEPS)
        again = rerun[late]
        residual = float(sols[late].state.residual[i])
        if int(again.result[i]) == ok:
            fa, fb = float(_objectives(case, again.y)[i]), float(f[not late][i])
            fine = abs(fa - fb) <= FTOL[case.dtype] * (1 + abs(fb))
            outcome = f"finishes in {int(again.num_steps[i])} steps, objectives differ by {abs(fa - fb):.1e}"
        else:
            residual = float(again.state.residual[i])
            fine = int(again.result[i]) == budget and residual <= case.tol ** 0.5
            outcome = f"ends {do.RESULTS(int(again.result[i])).name} at residual {residual:.1e}"
        text = (f"{where}: budget split, {'kernel' if late else 'PyTorch'} max_steps_reached, rerun with "
                f"{RERUN_STEPS} steps {outcome}")
        stats["splits"].append(text)
        if not fine:
            problems.append(text)
    both = (nat.result == ok) & (ref.result == ok)
    if bool(both.any()):
        zn, zr = nat.y[both].double(), ref.y[both].double()
        dz = (zn - zr).abs().amax(-1) / (1.0 + zr.abs().amax(-1))
        df = (f[True] - f[False])[both].abs() / (1.0 + f[False][both].abs())
        unique = _positive_definite(case)[both]
        stats["dz"] = float(dz[unique].max()) if bool(unique.any()) else 0.0
        stats["df"] = float(df.max())
        for j, i in enumerate(both.nonzero().flatten().tolist()):
            if not df[j] <= FTOL[case.dtype] or (unique[j] and not dz[j] <= ZTOL[case.dtype]):
                problems.append(f"{case.describe()}, instance {i} ({case.kinds[i]}): solutions differ by "
                                f"{float(dz[j]):.2e} (relative to 1 + |z|; Q positive definite: {bool(unique[j])}), "
                                f"objectives by {float(df[j]):.2e}")
    return problems, stats


@needs_native
def test_native_kernel_fuzz():
    """The kernel and the PyTorch iterations agree on every drawn instance: the same result codes (budget splits
    only as stated above), objectives to FTOL and, where Q is positive definite, solutions to ZTOL; the default draw
    reaches every outcome (successful, infeasible, unbounded)."""
    target = _env_int("DOUBLEOPT_FUZZ_INSTANCES", 1000)
    problems: list[str] = []
    splits: list[str] = []
    codes: Counter = Counter()
    kinds: Counter = Counter()
    worst = {"dz": 0.0, "df": 0.0, "steps": 0}
    instances = seed = 0
    while instances < target:
        case = make_case(seed)
        found, stats = compare(case)
        problems += found
        splits += stats["splits"]
        codes += stats["codes"]
        kinds += Counter(case.kinds)
        for key in worst:
            worst[key] = max(worst[key], stats[key])
        instances += case.B
        seed += 1
    tally = ", ".join(f"{n} {c}" for c, n in sorted(codes.items()))
    print(f"\nnative kernel fuzz: {instances} instances in {seed} batches (drawn as {dict(sorted(kinds.items()))}); "
          f"codes (PyTorch path): {tally}; budget splits: {len(splits)}; max relative |dz| (Q positive definite) "
          f"{worst['dz']:.1e}, |df| {worst['df']:.1e}; step-count difference up to {worst['steps']}; "
          f"mismatches: {len(problems)}")
    for text in splits:
        print("  " + text)
    assert not problems, f"{len(problems)} mismatches:\n" + "\n".join(problems[:40])
    assert len(splits) <= MAX_SPLIT_RATE * instances, f"{len(splits)} budget splits in {instances} instances"
    if target >= 1000:
        assert {"successful", "infeasible", "unbounded"} <= set(codes), codes


@needs_native
def test_the_fuzz_catches_a_broken_kernel(monkeypatch):
    """Not vacuous: a kernel that gives up after 3 iterations (its budget accounting broken) makes the comparison
    report the instances it left as max_steps_reached where the PyTorch iterations succeed (budget splits that
    do not pass the split rule: given more steps the kernel still stops far from the tolerance)."""
    real = _native.qp_ipm

    def gives_up(*args, **kw):
        return real(*args, **{**kw, "max_iter": min(kw["max_iter"], 3)})

    monkeypatch.setattr(_native, "qp_ipm", gives_up)
    found = [text for seed in range(6) for text in compare(make_case(seed))[0]]
    assert any("budget split, kernel max_steps_reached" in text for text in found), found


def test_the_fuzz_draws_are_what_they_say():
    """The generator's constructions hold (in float64, before any cast): a feasible or unbounded instance has a
    strictly feasible point, an infeasible one its contradictory pair of rows, an unbounded one a recession
    direction of descent; shapes follow the description; every kind is drawn."""
    seen = Counter()
    for seed in range(120):
        case = make_case(seed)
        Q, q, A, b, G, h = (None if t is None else t.double() for t in case.tensors)
        assert q.shape == (case.B, case.n) and h.shape == (case.B, case.m) and case.tensors[1].dtype == case.dtype
        assert G.shape[-2:] == (case.m, case.n) and (A is None) == (case.p == 0) and (Q.dim() == 2) == case.shared
        rtol = 1e-9 if case.dtype == F64 else 1e-5
        for i, kind in enumerate(case.kinds):
            seen[kind] += 1
            Qi, Gi = (t if t.dim() == 2 else t[i] for t in (Q, G))
            z0 = case.point[i]
            if kind in ("feasible", "unbounded"):
                assert bool((Gi @ z0 < h[i]).all())
                if A is not None:
                    Ai = A if A.dim() == 2 else A[i]
                    torch.testing.assert_close(Ai @ z0, b[i], rtol=rtol, atol=rtol * (1 + float(b[i].abs().max())))
            if kind == "infeasible":  # G_0 z <= h_0 and -G_0 z <= h_1 with h_0 + h_1 < 0
                assert torch.equal(Gi[1], -Gi[0]) and float(h[i, 0] + h[i, 1]) < 0
            if kind == "unbounded":
                d = case.direction
                tiny = rtol * (1 + float(Qi.abs().max()) + float(Gi.abs().max()))
                assert float((Qi @ d).abs().max()) <= tiny and float((Gi @ d).max()) <= tiny
                assert A is None or float(((A if A.dim() == 2 else A[i]) @ d).abs().max()) <= tiny
                assert float(q[i] @ d) < -0.5
    assert min(seen[k] for k in ("feasible", "infeasible", "unbounded", "random")) > 0, seen


# ---------------------------------------------------------------------------------------------------------------
# large agreement run


def _env_size() -> tuple[int, int, int, int]:
    raw = os.environ.get("DOUBLEOPT_AGREEMENT_SIZE", "") or "50,100,10,16"
    try:
        n, m, p, B = (int(v) for v in raw.split(","))
    except ValueError:
        raise ValueError(f"DOUBLEOPT_AGREEMENT_SIZE must be n,m,p,B (four integers), got {raw!r}") from None
    if not (n >= 1 and m >= 1 and 0 <= p < n and B >= 1):
        raise ValueError(f"DOUBLEOPT_AGREEMENT_SIZE needs n >= 1, m >= 1, 0 <= p < n, B >= 1, got {raw!r}")
    return n, m, p, B


def _clarabel(Q, q, A, b, G, h):
    """High-accuracy reference solutions (CVXPY + Clarabel at 1e-12 tolerances), one instance at a time."""
    import cvxpy as cp

    out = []
    for i in range(q.shape[0]):
        z = cp.Variable(q.shape[1])
        Qi = Q[i].numpy()
        Qi = (Qi + Qi.T) / 2
        cons = [G[i].numpy() @ z <= h[i].numpy()]
        if A is not None and A.shape[-2] > 0:
            cons.append(A[i].numpy() @ z == b[i].numpy())
        prob = cp.Problem(cp.Minimize(0.5 * cp.quad_form(z, cp.psd_wrap(Qi)) + q[i].numpy() @ z), cons)
        prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12, tol_ktratio=1e-10,
                   max_iter=500)
        assert prob.status == cp.OPTIMAL, f"the reference solver failed on instance {i}: {prob.status}"
        out.append(torch.as_tensor(z.value, dtype=F64))
    return torch.stack(out)


@needs_native
def test_large_qp_agreement_with_a_high_accuracy_reference():
    """``RandomQP`` (strictly feasible, ``Q`` positive definite: one solution each) at ``DOUBLEOPT_AGREEMENT_SIZE``:
    with and without the kernel, at ``tol=1e-12`` every solution is within 1e-6 (relative to ``1 + |z|``) of
    CVXPY + Clarabel's; at the default tolerance (1e-10) within 10 sqrt(tol) = 1e-4, the documented error bound on
    degenerate instances; the kernel and the PyTorch iterations agree to 1e-6 at both tolerances."""
    pytest.importorskip("cvxpy")  # part of the test extra
    n, m, p, B = _env_size()
    x = do.problems.RandomQP(n=n, m=m, p=p).sample(B, seed=2024)
    args = (x.Q, x.q, x.A, x.b, x.G, x.h)
    ref = _clarabel(*args)
    scale = 1.0 + ref.abs().amax(-1)
    report = []
    for tol, bound in ((1e-12, 1e-6), (None, 1e-4)):
        sols = {native: do.qp_solve(*args, tol=tol, solver=QP(native=native)) for native in (True, False)}
        assert sols[True].stats.get("native") and "native" not in sols[False].stats
        for native, sol in sols.items():
            assert sol.summary() == f"{B} successful"
            err = (sol.y - ref).abs().amax(-1) / scale
            report.append(f"tol={tol or 'default'} native={native}: max {float(err.max()):.1e}")
            assert float(err.max()) <= bound, (tol, native, err.max(), err.argmax())
        between = (sols[True].y - sols[False].y).abs().amax(-1) / scale
        assert float(between.max()) <= 1e-6, (tol, between.max(), between.argmax())
    print(f"\nlarge QP agreement n={n} m={m} p={p} B={B} vs CVXPY/Clarabel: " + "; ".join(report))
