"""Progress bars: one policy for every long run.

On a terminal a bar refreshes a few times a second; when output is not a terminal (logs, CI) it refreshes at
most every 30 seconds, so a long run writes a few lines, not thousands. A run bounded by a time budget
shows the budget (seconds) as the bar's total rather than a step count it will never reach.
"""

from __future__ import annotations

import sys
from typing import Any


def progress_bar(total: float | None, desc: str, *, unit: str = "step", initial: float = 0, leave: bool = True) -> Any:
    """A ``tqdm`` bar on stderr following the policy above."""
    from tqdm.auto import tqdm

    interval = 0.5 if sys.stderr.isatty() else 30.0
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave, mininterval=interval)


class TimeBudgetBar:
    """A bar whose total is a time budget in seconds; :meth:`advance` moves it to the elapsed time."""

    def __init__(self, budget: float, desc: str):
        self.bar = progress_bar(round(float(budget), 1), desc, unit="s")

    def advance(self, elapsed: float, **postfix: str) -> None:
        target = min(round(elapsed, 1), self.bar.total)
        if target > self.bar.n:
            self.bar.update(target - self.bar.n)
        if postfix:
            self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        self.bar.close()
