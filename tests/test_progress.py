"""Progress-bar policy: rare refreshes off a terminal; a time-budgeted run shows the budget as its total."""

import io

from doubleopt._progress import TimeBudgetBar, progress_bar


def test_bars_refresh_rarely_when_output_is_not_a_terminal(monkeypatch):
    monkeypatch.setattr("sys.stderr", io.StringIO())
    bar = progress_bar(100, "x")
    assert bar.mininterval == 30.0
    bar.close()


def test_time_budget_bar_counts_seconds_up_to_the_budget(monkeypatch):
    monkeypatch.setattr("sys.stderr", io.StringIO())
    b = TimeBudgetBar(60.0, "fit")
    assert b.bar.total == 60.0 and b.bar.unit == "s"
    b.advance(12.34, loss="0.5")
    assert b.bar.n == 12.3
    b.advance(5.0)  # never backwards
    assert b.bar.n == 12.3
    b.advance(500.0)  # never past the budget
    assert b.bar.n == 60.0
    b.close()
