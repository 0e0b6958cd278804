"""The documentation site builds in MkDocs' strict mode: a broken link, a cross-reference that resolves to nothing
or a docstring griffe cannot read (an argument missing from the signature, a role naming nothing) fails."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MKDOCS = Path(sys.executable).with_name("mkdocs")


def _build(site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([str(MKDOCS), "build", "--strict", "--site-dir", str(site)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def built_site(tmp_path_factory):
    if not MKDOCS.exists():
        pytest.fail(f"mkdocs is not installed next to {sys.executable}: install the test extra: pip install -e .[test]")
    site = tmp_path_factory.mktemp("site")
    proc = _build(site)
    return proc, site


def test_site_builds_strictly(built_site):
    proc, _ = built_site
    problems = [line for line in proc.stderr.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert proc.returncode == 0 and not problems, "mkdocs build --strict failed:\n" + "\n".join(problems or
                                                                                             [proc.stderr[-4000:]])


PACKAGES = ["doubleopt", "doubleopt.solvers", "doubleopt.adjoint", "doubleopt.problems", "doubleopt.layers",
            "doubleopt.learned", "doubleopt.amortized", "doubleopt.physical", "doubleopt.bilevel",
            "doubleopt.distributed", "doubleopt.rl", "doubleopt.bench"]


@pytest.mark.parametrize("package", PACKAGES)
def test_api_reference_has_every_public_name(built_site, package):
    """Each package's page documents every name in its ``__all__`` (the top-level page the names defined there;
    the solvers, adjoints and subpackages it re-exports have their own pages)."""
    import importlib

    proc, site = built_site
    assert proc.returncode == 0, "the site did not build (see test_site_builds_strictly)"
    page = site / "api" / (("index" if package == "doubleopt" else package.split(".", 1)[1]) + ".html")
    html = page.read_text()
    module = importlib.import_module(package)
    documented_elsewhere = set()
    if package == "doubleopt":
        import doubleopt.adjoint
        import doubleopt.solvers

        documented_elsewhere = {*doubleopt.solvers.__all__, *doubleopt.adjoint.__all__,
                                *(n for n in module.__all__ if hasattr(getattr(module, n), "__path__"))}
    missing = [name for name in module.__all__
               if name not in documented_elsewhere and f'id="{package}.{name}"' not in html]
    assert not missing, f"{page.relative_to(site)} does not document {missing}"


def test_docstring_conventions_render(built_site):
    """reST roles become links or code, ``Example:`` sections become code, math becomes MathML: no raw markup."""
    proc, site = built_site
    assert proc.returncode == 0
    pages = {p.name: p.read_text() for p in (site / "api").glob("*.html")}
    leftovers = {name: sorted(set(re.findall(r":(?:class|func|meth|attr|mod|data|math):`", html)))
                 for name, html in pages.items()}
    assert not any(leftovers.values()), f"raw reST roles in the API reference: {leftovers}"
    index = pages["index.html"]
    solve = index[index.index('id="doubleopt.solve"'):index.index('id="doubleopt.default_tol"')]
    assert "<math" in solve and "</math>" in solve  # the summary's min_y f(y; x_i)
    assert 'class="autorefs autorefs-internal"' in solve and 'href="#doubleopt.Solution"' in solve
    assert "Examples:" in solve and '<span class="gp">&gt;&gt;&gt; </span>' in solve  # doctest prompts as code


def test_api_reference_has_no_development_history(built_site):
    """The API reference is user documentation: no issue numbers, no "session" (as tests/test_docs.py for pages)."""
    proc, site = built_site
    assert proc.returncode == 0
    hits = {}
    for page in (site / "api").glob("*.html"):
        text = re.sub(r"<[^>]+>", " ", page.read_text())
        found = re.findall(r"\bissues? \d+\b|\bsessions?\b", text, flags=re.I)
        if found:
            hits[page.name] = found
    assert not hits, f"development history in the API reference: {hits}"


def test_builds_without_network_assets(built_site):
    """No page loads fonts or scripts from another host (the site reads offline)."""
    proc, site = built_site
    assert proc.returncode == 0
    offenders = [p.relative_to(site).as_posix() for p in site.rglob("*.html")
                 if "fonts.googleapis.com" in p.read_text() or "fonts.gstatic.com" in p.read_text()]
    assert not offenders, f"pages load Google fonts: {offenders}"


def test_make_docs_target_builds_into_site():
    makefile = (ROOT / "Makefile").read_text()
    assert "\ndocs: $(STAMP)\n" in makefile and "mkdocs build --strict --site-dir site" in makefile
    assert "site/" in (ROOT / ".gitignore").read_text().split()


def test_docstring_extension_rewrites_and_flags_broken_references(tmp_path, caplog):
    """The griffe extension turns roles into cross-references, ``Example:`` into ``Examples:`` and math into
    MathML, and warns (so the strict build fails) on a role that names nothing."""
    import logging

    import griffe  # installed with mkdocstrings-python (the test extra)
    pkg = tmp_path / "toypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        '"""Toy."""\n\n\nclass Thing:\n    """A thing."""\n\n    def step(self):\n        """One step."""\n\n\n'
        'def run(t):\n    """Run :meth:`Thing.step` on :class:`~toypkg.Thing` to reach :math:`\\\\min_y f(y)`;\n'
        '    see :func:`no_such_function`.\n\n    Example:\n        >>> 1 + 1\n        2\n    """\n'
    )
    (pkg / "helpers.py").write_text('"""Helpers."""\n')
    (pkg / "sub.py").write_text('"""Builds on :mod:`.helpers`."""\n')
    ext = griffe.load_extensions(f"{ROOT / 'docs/_griffe/doubleopt_docstrings.py'}:DoubleoptDocstrings")
    with caplog.at_level(logging.WARNING):
        module = griffe.load("toypkg", search_paths=[str(tmp_path)], extensions=ext)
    text = module["run"].docstring.value
    assert '<autoref identifier="toypkg.Thing.step" optional><code>Thing.step</code></autoref>' in text
    assert '<autoref identifier="toypkg.Thing" optional><code>Thing</code></autoref>' in text
    assert "<math" in text and ":math:" not in text
    sibling = '<autoref identifier="toypkg.helpers" optional><code>helpers</code></autoref>'
    assert sibling in module["sub"].docstring.value  # :mod:`.helpers`, relative to the package
    assert "\nExamples:\n    >>> 1 + 1\n" in text
    broken = [r.getMessage() for r in caplog.records if "no_such_function" in r.getMessage()]
    assert broken and "resolves to nothing" in broken[0] and "__init__.py:13:" in broken[0]  # the role's line
