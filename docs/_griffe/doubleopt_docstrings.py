"""Griffe extension for the API reference: reads doubleopt's docstring conventions as mkdocstrings renders them.

doubleopt's docstrings are Google style with a few reST habits, which the Google parser would otherwise show
as raw text. Before a docstring is parsed this extension rewrites:

* ``Example:`` section headings to ``Examples:`` (so the ``>>>`` lines render as code, not as an admonition);
* the roles ``:class:`x```, ``:func:``, ``:meth:``, ``:attr:``, ``:mod:``, ``:data:``, ``:exc:``, ``:obj:``
  into cross-references: the name is resolved as Python would from the documented object (or as a full path
  such as ``doubleopt.solve``) and links to its entry in the API reference when that entry is rendered, else shows as
  code. A name that does not resolve to anything in doubleopt (a typo, a renamed function) is a warning, so
  ``mkdocs build --strict`` fails on it; names under another package (``torch.``, ``gymnasium.``, ...) show
  as code;
* ``:math:`x``` and ``.. math::`` blocks into MathML (by latex2mathml, at build time: browsers render MathML
  natively, so the site loads no script and nothing from the network); an expression latex2mathml cannot read
  shows as code.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe
from latex2mathml.converter import convert as _latex_to_mathml

_LOG = griffe.get_logger("griffe_doubleopt_docstrings")

_ROLE = re.compile(r":(?:py:)?(class|func|meth|attr|mod|data|exc|obj):`([^`]+)`")
_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_EXAMPLE_HEADING = re.compile(r"^(\s*)Example:\s*$", re.M)
_MATH_DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]*(?P<first>.*)$")
_EXTERNAL_ROOTS = {"torch", "numpy", "np", "scipy", "gymnasium", "gym", "stable_baselines3", "sklearn", "qpth",
                   "cvxpylayers", "ot", "torchopt", "safetensors", "typing", "collections", "dataclasses"}


def _mathml(tex: str, *, display: bool) -> str | None:
    """MathML for the TeX ``tex`` (None if latex2mathml cannot convert it)."""
    tex = re.sub(r"\\arg(?![a-zA-Z])", r"\\mathrm{arg}\\,", tex)  # latex2mathml has no \arg
    try:
        out = _latex_to_mathml(tex, display="block" if display else "inline")
    except Exception:  # noqa: BLE001  (any parse failure: show the source instead)
        return None
    return out.replace("\n", " ")


def _math_blocks(text: str) -> str:
    """``.. math:: expr`` (with indented continuation lines) -> display MathML (or a code block) at the same
    indent."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        m = _MATH_DIRECTIVE.match(lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        indent = m["indent"]
        body = [m["first"].strip()] if m["first"].strip() else []
        i += 1
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > len(indent)):
            if not lines[i].strip() and (i + 1 >= len(lines) or not lines[i + 1].startswith(indent + " ")):
                break
            body.append(lines[i].strip())
            i += 1
        while body and not body[-1]:
            body.pop()
        mathml = _mathml(" ".join(body), display=True)
        if mathml is None:
            out += [f"{indent}```tex", *(f"{indent}{b}" for b in body), f"{indent}```"]
        else:
            out += ["", f"{indent}{mathml}", ""]
    return "\n".join(out)


def _lookup(obj: griffe.Object, path: str) -> griffe.Object | griffe.Alias | None:
    """The object at ``path`` (members of a class include inherited ones), or None."""
    parts = path.split(".")
    try:
        cur = obj.modules_collection[parts[0]]
        for part in parts[1:]:
            if cur.is_alias:
                cur = cur.final_target
            members = cur.all_members if cur.is_class else cur.members
            cur = members[part]
    except Exception:  # noqa: BLE001  (a missing member, an alias to a module not loaded: not found)
        return None
    return cur


def _resolve(obj: griffe.Object, name: str, *, relative: bool = False) -> str | None:
    """The full path ``name`` refers to from ``obj``'s scope, or None. ``relative`` (a reST ``.name``): a member
    of ``obj`` or of one of its parents, the nearest first (``:mod:`.api``` in a package's submodule: the
    sibling module)."""
    if relative:
        scope: griffe.Object | None = obj
        while scope is not None:
            if _lookup(obj, f"{scope.path}.{name}") is not None:
                return f"{scope.path}.{name}"
            scope = scope.parent
        return None
    if "." in name and name.split(".", 1)[0] in obj.modules_collection.members:  # a full path
        return name if _lookup(obj, name) is not None else None
    head, _, rest = name.partition(".")
    base = None
    scope = obj
    while scope is not None and base is None:  # a method inherited by an enclosing class (griffe skips those)
        if scope.is_class and head in scope.all_members:
            member = scope.all_members[head]
            base = member.target_path if member.is_alias else member.path
        scope = scope.parent
    try:
        base = base or obj.resolve(head)
    except Exception:  # noqa: BLE001  (griffe's NameResolutionError and alias errors)
        return None
    path = f"{base}.{rest}" if rest else base
    return path if _lookup(obj, path) is not None else None


def _rewrite(obj: griffe.Object, text: str, filepath: object, lineno: int | None) -> str:
    text = _EXAMPLE_HEADING.sub(r"\1Examples:", text)

    def role(m: re.Match) -> str:
        target = re.sub(r"\s+", "", m[2])  # a role may wrap across lines
        if "<" in target and target.endswith(">"):  # reST "title <target>"
            target = target[target.index("<") + 1 : -1]
        short = target.startswith("~")
        name = target.lstrip("~!")
        relative = name.startswith(".")
        name = name.lstrip(".")
        title = name.rsplit(".", 1)[-1] if short else name
        code = f"<code>{html.escape(title)}</code>"
        if name.split(".", 1)[0] in _EXTERNAL_ROOTS:
            return code
        path = _resolve(obj, name, relative=relative)
        if path is None:
            line = "?" if lineno is None else lineno + text.count("\n", 0, m.start())
            _LOG.warning(f"{filepath}:{line}: the reference :{m[1]}:`{m[2]}` resolves to nothing")
            return code
        return f'<autoref identifier="{path}" optional>{code}</autoref>'

    text = _ROLE.sub(role, text)  # first: the warnings' line numbers count the docstring's own lines
    text = _math_blocks(text)
    return _MATH_ROLE.sub(lambda m: _mathml(m[1], display=False) or f"`{m[1]}`", text)


class DoubleoptDocstrings(griffe.Extension):
    """Rewrites every docstring of the loaded package once it is fully loaded (so names resolve across modules)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        seen: set[int] = set()

        def visit(obj: griffe.Object) -> None:
            if id(obj) in seen:
                return
            seen.add(id(obj))
            if obj.docstring is not None:
                obj.docstring.value = _rewrite(obj, obj.docstring.value, obj.filepath, obj.docstring.lineno)
            for member in obj.members.values():
                if not member.is_alias:
                    visit(member)

        visit(pkg)
