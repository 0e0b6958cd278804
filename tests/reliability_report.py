"""Records what the property suite (tests/test_properties.py) tried and renders docs/reliability.md from it.

Each example of a property test calls :func:`record` with the entry point, the class of input it drew and the outcome
it observed (an error naming the argument, a per-instance result code, ...). When the environment variable
``DOUBLEOPT_RELIABILITY_TABLE`` names a file, the suite writes the table there at the end of its run::

    DOUBLEOPT_HYPOTHESIS_PROFILE=long DOUBLEOPT_RELIABILITY_TABLE=docs/reliability.md \\
        .venv/bin/pytest tests/test_properties.py -p no:xdist

(``-p no:xdist``: one process sees every example; with xdist each worker would write its own part.)
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from pathlib import Path

_RECORDS: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
_LIMITATIONS: dict[str, list[str]] = defaultdict(list)

HEADER = """# Reliability: what bad and unusual input gets

Every public entry point promises the same contract: bad input (wrong shapes, dtypes, NaN or inf, empty
batches, zero or negative sizes and rates) gets a clear error naming the argument, or a per-instance result code
in `Solution.result`; no NaN or inf comes back as a success; no input tensor or array is modified.

The tables below are written by the property-based test suite (`tests/test_properties.py`, with
[Hypothesis](https://hypothesis.readthedocs.io)) from the examples it ran: per entry point, each class of
input it drew, how many examples, and what came back. Every row is also an assertion of that suite: an
outcome outside the contract fails it. Regenerate this page with

```
DOUBLEOPT_HYPOTHESIS_PROFILE=long DOUBLEOPT_RELIABILITY_TABLE=docs/reliability.md \\
    .venv/bin/pytest tests/test_properties.py -p no:xdist
```

(`DOUBLEOPT_HYPOTHESIS_PROFILE=long` draws {long} examples per property instead of the {default} of the default
run; the examples are derandomized, so the same command writes the same counts.)

Two parts of the contract are checked by fixed tests rather than drawn examples:

- with `throw=False`, an instance that failed as `nonfinite` adds exactly zero (never NaN) to the gradients of
  shared parameters and of the other instances, under `Unroll` and `Truncated` for every solver, and under the
  QP's KKT backward (`tests/test_reliability_gradients.py`);
- the `doubleopt` command answers a user mistake (a bad flag value, a missing or corrupt file) with one line on
  stderr and exit code 2, while an internal error keeps its traceback (`tests/test_cli_errors.py`).

Longer runs. Three more checks run briefly in `make test`; these commands run them longer:

- the native QP kernel against the PyTorch iterations on random feasible, infeasible and unbounded QPs (same result
  codes and solutions; 1000 instances in `make test`):
  `DOUBLEOPT_FUZZ_INSTANCES=5000 .venv/bin/pytest tests/test_qp_native_fuzz.py -p no:xdist -s -k fuzz`
- large QPs against CVXPY/Clarabel at high accuracy, with and without the kernel (`n,m,p,B`; `50,100,10,16` in
  `make test`):
  `DOUBLEOPT_AGREEMENT_SIZE=50,100,10,128 .venv/bin/pytest tests/test_qp_native_fuzz.py -p no:xdist -s -k agreement`
- the stress run: `qp_solve`, `do.solve` and Sinkhorn loops in several threads and processes at once, checked
  against single-threaded results, with resident memory bounded (exit code 1 on any mismatch or growth):
  `.venv/bin/python scripts/stress.py --threads 4 --processes 2 --seconds 60`
"""


def record(entry: str, input_class: str, outcome: str) -> None:
    """One example of ``entry`` with input of class ``input_class`` gave ``outcome``."""
    _RECORDS[entry][input_class][outcome] += 1


def limitation(entry: str, text: str) -> None:
    """An accepted limitation of ``entry`` (listed under its table)."""
    if text not in _LIMITATIONS[entry]:
        _LIMITATIONS[entry].append(text)


def render(profile: str, examples: dict[str, int]) -> str:
    lines = [HEADER.format(long=examples["long"], default=examples["default"]).rstrip(), ""]
    lines.append(f"Profile of this run: `{profile}` ({examples[profile]} examples per property).")
    lines.append("")
    for entry in sorted(_RECORDS):
        lines += [f"## {entry}", "", "| input | examples | outcome |", "|---|---:|---|"]
        for input_class in sorted(_RECORDS[entry]):
            outcomes = _RECORDS[entry][input_class]
            total = sum(outcomes.values())
            text = "; ".join(f"{o} ({n})" if len(outcomes) > 1 else o for o, n in sorted(outcomes.items()))
            lines.append(f"| {input_class} | {total} | {text} |")
        lines.append("")
        if _LIMITATIONS.get(entry):
            lines.append("Accepted limitations:")
            lines.append("")
            lines += [f"- {t}" for t in _LIMITATIONS[entry]]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def write_if_requested(profile: str, examples: dict[str, int]) -> Path | None:
    """Write the page to ``$DOUBLEOPT_RELIABILITY_TABLE`` (atomically) if that variable is set."""
    target = os.environ.get("DOUBLEOPT_RELIABILITY_TABLE")
    if not target or not _RECORDS:
        return None
    path = Path(target)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render(profile, examples))
    os.replace(tmp, path)
    return path
