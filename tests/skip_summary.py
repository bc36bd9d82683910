"""One line per skip reason at the end of a test run.

``-rs`` prints a line per skipped test: hundreds of identical lines when the
PostgreSQL and Redis cases skip. This hook groups them by reason, with a
count, most frequent first. Imported by ``tests/conftest.py``.
"""

from __future__ import annotations

import collections
import typing as t


def skip_reason(report: t.Any) -> str:
    """The reason of a skipped test report, without pytest's ``Skipped:``."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        reason = str(longrepr[2])
    else:
        reason = str(longrepr)
    return reason.removeprefix("Skipped: ")


def pytest_terminal_summary(terminalreporter: t.Any) -> None:
    """Print ``N  reason`` for each distinct skip reason."""
    counts = collections.Counter(
        skip_reason(report) for report in terminalreporter.stats.get("skipped", [])
    )
    if not counts:
        return
    terminalreporter.section("skipped, by reason", sep="-")
    width = len(str(max(counts.values())))
    for reason, count in counts.most_common():
        terminalreporter.write_line(f"{count:>{width}}  {reason}")
