"""Smoke runs of the amortized studies (``--quick``): they run end to end and write their reports."""

from __future__ import annotations

import json

import pytest

from doubleopt.bench import find_studies, run_study


@pytest.mark.parametrize("name, extra", [("lista", []), ("meta_ot", ["--tasks", "digits"]), ("vae", [])])
def test_study_quick(name, extra, tmp_path):
    assert name in find_studies()
    rows = run_study(name, ["--quick", "--out", str(tmp_path), *extra])
    assert rows
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["rows"] and "conditions" in data
    assert (tmp_path / f"{name}.png").exists()
    if name == "lista":  # like for like: both sides through do.solve (headline) and both bare; choices on validation
        modes = {(r["method"].split("-")[0], r["mode"]) for r in rows}
        assert {("FISTA", "do.solve"), ("FISTA", "bare"), ("LISTA", "do.solve"), ("LISTA", "bare")} <= modes
        assert data["fista_tol_from_validation"] > 0 and set(data["depth_from_validation"]) == {"LISTA", "ALISTA"}
        fista = next(r for r in rows if r["method"] == "FISTA" and r["mode"] == "do.solve")
        assert fista["stopping"].startswith("tol ") and fista["iters_max"] < 500  # its tolerance stopped it
    if name == "vae":  # every row timed on its own (warm-up + median), start and gradient method stated
        assert all(r["timing"].startswith("warm-up + median") and r["grad"] == "autograd" for r in rows)
