"""Reliability of the QP solver and its native kernel (issue 18, "Found"): per-dtype numerical guards (float32
included), the native wrapper's checks of what it hands to C, and the kernel cache's permissions and hashes."""

from __future__ import annotations

import ctypes
import hashlib
import io
import tokenize
import warnings
from pathlib import Path

import pytest
import torch

import doubleopt as do
from doubleopt.problems import RandomQP
from doubleopt.solvers import _native
from doubleopt.solvers import qp as qp_mod
from doubleopt.solvers.qp import QP, qp_guards

F32, F64 = torch.float32, torch.float64
needs_compiler = pytest.mark.skipif(_native.compiler() is None, reason="no C compiler: the native kernel is off")


# ---- per-dtype guards ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F32, F64])
def test_guards_are_nonzero_and_finite_in_their_dtype(dtype):
    g = qp_guards(dtype)
    tiny, huge, min_scale = (torch.tensor(v, dtype=dtype) for v in (g.tiny, g.huge, g.min_scale))
    assert tiny > 0 and min_scale > 0  # 1e-300 is 0 in float32
    assert tiny == torch.finfo(dtype).tiny
    assert huge > 1 and torch.isfinite(huge) and torch.isfinite(4 * huge)
    assert torch.isfinite(huge * 0) and huge * 0 == 0


def test_the_qp_code_has_no_literal_guards():
    """The guards are named once (qp_guards); a bare 1e-300 / 1e30 / 1e200 in the code would be 0 or inf in
    float32 again (docstrings may mention them)."""
    files = sorted(Path(qp_mod.__file__).parent.glob("*.py"))  # the solvers/qp package, every module
    assert len(files) >= 4
    for f in files:
        src = f.read_text()
        toks = tokenize.generate_tokens(io.StringIO(src).readline)
        numbers = [tok.string for tok in toks if tok.type == tokenize.NUMBER]
        assert not [n for n in numbers if float(n) in (1e-300, 1e30, 1e200)], f.name


def test_the_other_python_qp_modules_have_no_literal_guards():
    """The QP code outside the solvers/qp package (the problem families, the layer, the amortized warm start) uses
    the named per-dtype guards too: no bare 1e-300 / 1e30 / 1e200 (each is 0 or inf in float32)."""
    root = Path(do.__file__).parent
    for rel in ("problems/qp.py", "layers/qp.py", "amortized/qp_warmstart.py"):
        toks = tokenize.generate_tokens(io.StringIO((root / rel).read_text()).readline)
        numbers = [tok.string for tok in toks if tok.type == tokenize.NUMBER]
        assert not [n for n in numbers if float(n) in (1e-300, 1e30, 1e200)], rel


@pytest.mark.parametrize("dtype", [F32, F64])
def test_weakly_active_detector_works_in_each_dtype(dtype):
    """The detector's 'both zero' threshold comes from the dtype (sqrt(eps)), so a degenerate pair is seen in
    float32 as in float64, and a separated pair (or an exactly inactive one) is not."""
    from doubleopt.solvers.qp.weakly_active import ambiguous_pairs

    s = torch.tensor([[1e-10, 0.5, 6.8e-5, 0.0, 2.0]], dtype=dtype)
    lam = torch.tensor([[1e-2, 0.0, 3.5e-5, 0.0, 0.0]], dtype=dtype)
    h = torch.ones(1, 5, dtype=dtype)
    assert ambiguous_pairs(s, lam, h).tolist() == [[False, False, True, True, False]]


def test_adjoint_scaling_is_finite_in_float32():
    s = torch.tensor([[10.0, 0.0, 1e-3]], dtype=F32)
    lam = torch.tensor([[0.0, 2.0, 0.0]], dtype=F32)  # lam = 0 exactly (an inactive row after the polish)
    E = qp_mod.kkt_backward._adjoint_scaling(s, lam)
    assert bool(torch.isfinite(E).all()) and E[0, 1] == 0
    assert bool((E * torch.zeros_like(E) == 0).all())  # inf * 0 would be NaN


def _box_qp(dtype, requires_grad=True):
    n = 3
    Q = torch.eye(n, dtype=dtype)
    q = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.2, -0.1], [-0.5, 0.4, -20.0]], dtype=dtype, requires_grad=requires_grad)
    G = torch.cat([torch.eye(n), -torch.eye(n)]).to(dtype)
    h = torch.cat([10 * torch.ones(n), torch.zeros(n)]).to(dtype)  # 0 <= z <= 10: most upper bounds are slack
    return Q, q, G, h


def test_float32_compute_backward_is_finite_and_matches_float64():
    """compute_dtype=float32 through the KKT backward (lam = 0 on inactive rows, slacks of 10): it raised
    ("value cannot be converted to type float without overflow") from the float64-only cap 1e200."""
    grads = {}
    for cdt in (F32, F64):
        Q, q, G, h = _box_qp(F32)
        sol = do.qp_solve(Q, q, None, None, G, h, compute_dtype=cdt)
        assert sol.summary() == "3 successful" and bool(torch.isfinite(sol.y).all())
        w = torch.tensor([[1.0, 2.0, -1.0]], dtype=F32)
        (grads[cdt],) = torch.autograd.grad((sol.y * w).sum(), q)
        assert bool(torch.isfinite(grads[cdt]).all())
    torch.testing.assert_close(grads[F32], grads[F64], atol=1e-3, rtol=0)


def test_float32_degenerate_instance_gives_no_nan():
    """min 1/2 z^2 + q z s.t. z <= 0 with q = 0: the constraint is weakly active (s = lam = 0 at the solution),
    solved natively in float32 to a tight tolerance (s * lam underflows) and differentiated."""
    q = torch.tensor([[0.0], [-1.0], [1.0]], dtype=F32, requires_grad=True)
    Q, G, h = torch.eye(1, dtype=F32), torch.ones(1, 1, dtype=F32), torch.zeros(1, dtype=F32)
    for tol in (1e-4, 0.0):
        sol = do.qp_solve(Q, q, None, None, G, h, compute_dtype=F32, tol=tol, max_steps=80, throw=False)
        for name in ("y", "value"):
            assert bool(torch.isfinite(getattr(sol, name)).all()), name
        for name in ("s", "lam", "residual"):
            assert bool(torch.isfinite(getattr(sol.state, name)).all()), name
        y = sol.y.detach()
        assert abs(float(y[0])) < 1e-3 and abs(float(y[1])) < 1e-3 and abs(float(y[2]) + 1) < 1e-3
        if tol > 0:
            assert sol.summary() == "3 successful"
            (g,) = torch.autograd.grad(sol.y.sum(), q)
            assert bool(torch.isfinite(g).all())


# ---- the native kernel's wrapper ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """The kernel built into a private, fresh cache (so these tests do not depend on the user's cache)."""
    if _native.compiler() is None:
        pytest.skip("no C compiler: the native kernel is off")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DOUBLEOPT_CACHE", str(tmp_path_factory.mktemp("kernel_cache")))
        mp.delenv("DOUBLEOPT_NATIVE", raising=False)
        mp.setattr(_native, "_lib", False)
        lib = _native.native_lib()
        assert lib is not None
        yield lib


def _inputs(B=4, k=5, m=8, seed=0, shared=False):
    """An inequality-form QP batch as the kernel takes it (P, c, F, g, shift, qn, hn, ydiv, zdiv)."""
    gen = torch.Generator().manual_seed(seed)
    nP = 1 if shared else B
    R = torch.randn(nP, k, k, dtype=F64, generator=gen)
    P = R @ R.transpose(-1, -2) + torch.eye(k, dtype=F64)
    F = torch.randn(nP, m, k, dtype=F64, generator=gen)
    c = torch.randn(B, k, dtype=F64, generator=gen)
    g = torch.rand(B, m, dtype=F64, generator=gen) + 0.5
    ones = torch.ones(B, dtype=F64)
    return P, c, F, g, 1e-12 * ones, 1 + c.abs().amax(-1), 1 + g.abs().amax(-1), 1e9 * ones, 1e12 * ones


_OPTS = {"tol": 1e-10, "delta": 2e-12, "step_fraction": 0.99, "refine": 1, "max_iter": 60}


def _run(*args, **kw):
    return _native.qp_ipm(*args, **{**_OPTS, **kw})


@needs_compiler
@pytest.mark.parametrize("which", ["P", "F", "both"])
def test_a_shared_matrix_not_expanded_is_read_once(kernel, which):
    """A (1, k, k) matrix with B > 1 (not an expanded view): the wrapper expands it, so the kernel reads it once per
    instance instead of stepping past its end."""
    args = list(_inputs(B=4, shared=True))
    ref = _run(args[0].expand(4, -1, -1), args[1], args[2].expand(4, -1, -1), *args[3:])
    if which in ("P", "both"):
        assert args[0].shape[0] == 1 and args[0].stride(0) != 0
    if which == "P":
        args[2] = args[2].expand(4, -1, -1)
    if which == "F":
        args[0] = args[0].expand(4, -1, -1)
    out = _run(*args)
    assert int(ref[5].max()) == 0 and out[5].tolist() == ref[5].tolist()  # every instance converged
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


@needs_compiler
def test_non_contiguous_inputs_give_the_same_result(kernel):
    P, c, F, g, *rest = _inputs(B=3)
    ref = _run(P, c, F, g, *rest)
    Pt = P.transpose(-1, -2).contiguous().transpose(-1, -2)  # symmetric: same values, column-major layout
    Fw = torch.cat([F, F], dim=-1)[..., : F.shape[-1]]  # rows with a stride of 2k
    cw = torch.stack([c, c], dim=-1)[..., 0]  # stride 2
    assert not Pt[0].is_contiguous() and not Fw[0].is_contiguous() and not cw.is_contiguous()
    out = _run(Pt, cw, Fw, g, *rest)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


@needs_compiler
@pytest.mark.parametrize(
    "index,bad,match",
    [
        (0, lambda t: t.float(), "P must be float64"),
        (2, lambda t: t.float(), "F must be float64"),
        (1, lambda t: t.float(), "c must be float64"),
        (4, lambda t: t.to(torch.int64), "shift must be float64"),
        (0, lambda t: t.to("meta"), "P must be on the CPU"),
        (3, lambda t: t.to("meta"), "g must be on the CPU"),
        (0, lambda t: t[..., :-1], r"P must have shape \(4, 5, 5\)"),
        (0, lambda t: t[:2], r"P must have shape \(4, 5, 5\), or \(1, 5, 5\)"),
        (0, lambda t: t[0], r"P must have shape"),
        (2, lambda t: t[:, :-1], r"F must have shape \(4, 8, 5\)"),
        (3, lambda t: t[:3], r"g must have shape \(B, m\) = \(4, m\)"),
        (1, lambda t: t[0], r"c must have shape \(B, k\)"),
        (5, lambda t: t[:3], r"qn must have shape \(4,\)"),
        (8, lambda t: t[:, None], r"zdiv must have shape \(4,\)"),
        (6, lambda t: t.tolist(), "hn must be a torch.Tensor"),
    ],
)
def test_wrong_inputs_are_refused_before_c_reads_them(kernel, index, bad, match):
    args = list(_inputs(B=4))
    args[index] = bad(args[index])
    with pytest.raises(ValueError, match=match):
        _run(*args)


@needs_compiler
def test_wrong_warm_starts_are_refused(kernel):
    args = _inputs(B=4)
    sol = _run(*args)
    u, s, lam = sol[0], sol[1], sol[2]
    warm = _run(*args, start=(u, s, lam))
    torch.testing.assert_close(warm[0], sol[0], atol=1e-8, rtol=0)
    with pytest.raises(ValueError, match=r"start s must have shape \(4, 8\)"):
        _run(*args, start=(u, s[:, :-1], lam))
    with pytest.raises(ValueError, match="start lam must be float64"):
        _run(*args, start=(u, s, lam.float()))
    with pytest.raises(ValueError, match=r"start must be a tuple \(u, s, lam\)"):
        _run(*args, start=(u, s))


@needs_compiler
def test_empty_dimensions_are_refused(kernel):
    P, c, F, g, *rest = _inputs(B=2)
    with pytest.raises(ValueError, match="m >= 1 inequalities"):
        _run(P, c, F[:, :0], g[:, :0], *rest)


def test_the_storage_span_check():
    t = torch.zeros(10, dtype=F64)[2:]
    _native._check_span("x", t, 8)
    with pytest.raises(ValueError, match="x: the kernel would read 9 elements but its storage holds 8"):
        _native._check_span("x", t, 9)


# ---- the kernel cache: permissions and hashes ---------------------------------------------------------------


def _fresh_cache(monkeypatch, path: Path) -> Path:
    path.mkdir(mode=0o700, exist_ok=True)
    monkeypatch.setenv("DOUBLEOPT_CACHE", str(path))
    monkeypatch.delenv("DOUBLEOPT_NATIVE", raising=False)
    monkeypatch.setattr(_native, "_lib", False)
    return path


@needs_compiler
@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757, 0o1777])
def test_a_cache_folder_writable_by_others_is_refused(tmp_path, monkeypatch, mode):
    cache = _fresh_cache(monkeypatch, tmp_path / "shared")
    cache.chmod(mode)
    with pytest.raises(PermissionError, match="writable by other users"):
        _native.cache_dir()
    with pytest.warns(RuntimeWarning, match=r"cache folder .* is refused: it is writable by other users"):
        assert _native.native_lib() is None
    assert not list(cache.iterdir())  # nothing built or loaded there
    x = RandomQP(n=5, m=10, p=1).sample(2, seed=0)
    sol = do.qp_solve(x.Q, x.q, x.A, x.b, x.G, x.h)  # the PyTorch iterations run instead
    assert sol.summary() == "2 successful" and "native" not in sol.stats


def _record_loads(monkeypatch) -> list[str]:
    """Patch ctypes.CDLL to record the SHA-256 of every library file loaded."""
    loaded: list[str] = []
    real = ctypes.CDLL

    def spy(name, *args, **kw):
        loaded.append(hashlib.sha256(Path(name).read_bytes()).hexdigest())
        return real(name, *args, **kw)

    monkeypatch.setattr(ctypes, "CDLL", spy)
    return loaded


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    tmp.replace(path)


@needs_compiler
def test_a_tampered_cached_library_is_rebuilt_never_loaded(tmp_path, monkeypatch):
    cache = _fresh_cache(monkeypatch, tmp_path / "cache")
    loaded = _record_loads(monkeypatch)
    assert _native.native_lib() is not None
    (so,) = cache.glob("qp_ipm-*.so")
    record = so.with_name(so.name + ".sha256")
    digest = record.read_text().strip()
    assert loaded == [digest] and hashlib.sha256(so.read_bytes()).hexdigest() == digest
    # a cached library is loaded after its hash is checked
    monkeypatch.setattr(_native, "_lib", False)
    assert _native.native_lib() is not None and loaded == [digest, digest]
    # tampered: still a loadable library (appended bytes), but not the one that was built (the file is replaced, not
    # rewritten in place: this process has the original mapped)
    _replace(so, so.read_bytes() + b"tampered")
    tampered = hashlib.sha256(so.read_bytes()).hexdigest()
    monkeypatch.setattr(_native, "_lib", False)
    with pytest.warns(RuntimeWarning, match="does not match the hash recorded"):
        assert _native.native_lib() is not None
    assert tampered not in loaded
    assert hashlib.sha256(so.read_bytes()).hexdigest() == record.read_text().strip() == loaded[-1]
    # truncated (corrupt): rebuilt as well
    _replace(so, so.read_bytes()[:100])
    monkeypatch.setattr(_native, "_lib", False)
    with pytest.warns(RuntimeWarning, match="does not match"):
        assert _native.native_lib() is not None
    assert hashlib.sha256(so.read_bytes()).hexdigest() == record.read_text().strip() == loaded[-1]
    x = RandomQP(n=6, m=12, p=2).sample(3, seed=0)
    assert do.qp_solve(x.Q, x.q, x.A, x.b, x.G, x.h, solver=QP(native=True)).summary() == "3 successful"


@needs_compiler
def test_a_cached_library_without_a_record_or_not_private_is_rebuilt(tmp_path, monkeypatch):
    cache = _fresh_cache(monkeypatch, tmp_path / "cache")
    loaded = _record_loads(monkeypatch)
    assert _native.native_lib() is not None
    (so,) = cache.glob("qp_ipm-*.so")
    record = so.with_name(so.name + ".sha256")
    record.unlink()  # e.g. a cache written before hashes were recorded: rebuilt quietly, then recorded
    monkeypatch.setattr(_native, "_lib", False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _native.native_lib() is not None
    assert record.exists() and len(loaded) == 2
    so.chmod(0o666)  # a library file others could rewrite is not trusted either
    monkeypatch.setattr(_native, "_lib", False)
    with pytest.warns(RuntimeWarning, match="not private"):
        assert _native.native_lib() is not None
    assert len(loaded) == 3 and so.stat().st_mode & 0o022 == 0
