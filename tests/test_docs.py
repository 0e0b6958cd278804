"""The README is a short landing page, and the README and docs pages link only to files that exist."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
# [text](target) and ![alt](target); the target ends at whitespace or ')' (an optional "title" is ignored)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", flags=re.S | re.M)


def _links(text: str) -> list[str]:
    return LINK.findall(FENCE.sub("", text))


def test_readme_is_short_and_starts_with_the_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 280
    assert "make demo" in text and "make test" in text


def test_docs_pages_exist():
    names = {p.name for p in PAGES}
    assert {"index.md", "architecture.md", "solvers.md", "learned.md", "qp.md", "amortized.md", "physical.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_relative_links_point_to_existing_files(page):
    missing = []
    for target in _links(page.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.I) or target.startswith("#"):
            continue  # external (http:, mailto:, ...) or an anchor on the same page
        path = target.split("#", 1)[0].split("?", 1)[0]
        if not (page.parent / path).exists():
            missing.append(target)
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_no_development_history_wording(page):
    hits = [m.group(0) for m in re.finditer(r"\bsessions?\b", page.read_text(), flags=re.I)]
    assert not hits, f"{page.relative_to(ROOT)} mentions {hits}"
