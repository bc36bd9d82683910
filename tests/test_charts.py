"""The SVG chart functions (pure) and the percentile/window helpers of the
metrics module."""

from __future__ import annotations

import datetime as dt
import statistics
import xml.etree.ElementTree as ET

import pytest
from flask_webhooks.admin.charts import line_chart
from flask_webhooks.admin.charts import nice_ceiling
from flask_webhooks.admin.charts import rate_bar
from flask_webhooks.admin.charts import sparkline
from flask_webhooks.admin.charts import stacked_bars
from flask_webhooks.admin.charts import STATUS_STYLES
from flask_webhooks.admin.metrics import percentile
from flask_webhooks.admin.metrics import Window

SVG = "{http://www.w3.org/2000/svg}"
START = dt.datetime(2026, 3, 2, 0, 0, tzinfo=dt.UTC)


def hours(n: int) -> list[dt.datetime]:
    return [START + dt.timedelta(hours=i) for i in range(n)]


def parse(markup: str) -> ET.Element:
    return ET.fromstring(str(markup))


def titles(root: ET.Element) -> list[str]:
    return [el.text or "" for el in root.iter(f"{SVG}title")]


def test_stacked_bars_heights_patterns_and_tooltips() -> None:
    series = {"succeeded": [4, 0, 2], "failed": [2, 0, 0], "retrying": [0, 0, 0]}
    root = parse(stacked_bars(hours(3), series, chart_id="c1", title="Per hour"))
    assert root.get("role") == "img"
    assert titles(root)[0] == "Per hour"
    desc = root.find(f"{SVG}desc")
    assert desc is not None and "6 succeeded, 2 failed" in (desc.text or "")
    # One pattern per status, each with its own look (not only a colour).
    patterns = {p.get("id"): p for p in root.iter(f"{SVG}pattern")}
    assert set(patterns) == {"c1-succeeded", "c1-failed", "c1-retrying"}
    looks = {len(list(p)) > 1 for p in patterns.values()}
    assert looks == {True, False}  # solid for succeeded, marks for the others
    bars = [g for g in root.iter(f"{SVG}g") if g.get("class") == "wh-bar"]
    assert [g.get("data-total") for g in bars] == ["6", "0", "2"]
    tips = [str(g.findtext(f"{SVG}title")) for g in bars]
    assert tips[0] == "2026-03-02 00:00 to 01:00 UTC: 4 succeeded, 2 failed"
    assert tips[1].endswith("no deliveries")
    segs = {
        r.get("class"): float(r.get("height", 0))
        for r in bars[0].iter(f"{SVG}rect")
        if r.get("class", "").startswith("wh-seg")
    }
    # The scale tops at 10 (6 rounded up): 4/10 and 2/10 of the plot height.
    assert segs["wh-seg wh-seg-succeeded"] == pytest.approx(
        2 * segs["wh-seg wh-seg-failed"], abs=0.2
    )
    legend = [
        t.text
        for g in root.iter(f"{SVG}g")
        if g.get("class") == "wh-legend-item"
        for t in g.iter(f"{SVG}text")
    ]
    assert legend == ["succeeded 6", "failed 2", "retrying 0"]


def test_stacked_bars_without_data_say_so_and_escape_text() -> None:
    markup = stacked_bars(
        hours(24), {"succeeded": [0] * 24}, chart_id='x"<y', title="A & <B>"
    )
    root = parse(markup)
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "No deliveries in this window" in texts
    assert titles(root)[0] == "A & <B>"
    assert root.get("id") == "x--y"


def test_seven_day_labels_name_days() -> None:
    root = parse(
        stacked_bars(hours(168), {"failed": [1] * 168}, chart_id="w", title="7d")
    )
    labels = [t.text for t in root.iter(f"{SVG}text")]
    assert "Mon 02" in labels and "Sun 08" in labels
    assert len([g for g in root.iter(f"{SVG}g") if g.get("class") == "wh-bar"]) == 168


def test_line_chart_gaps_and_distinct_line_styles() -> None:
    root = parse(
        line_chart(
            hours(4),
            {"p50": [10.0, None, 30.0, 40.0], "p95": [20.0, None, None, 1500.0]},
            chart_id="lat",
            title="Latency",
        )
    )
    paths = {p.get("class"): p for p in root.iter(f"{SVG}path")}
    p50 = paths["wh-line wh-line-p50"].get("d", "")
    assert p50.count("M") == 2 and p50.count("L") == 1  # broken at the gap
    assert paths["wh-line wh-line-p50"].get("stroke-dasharray") is None
    assert paths["wh-line wh-line-p95"].get("stroke-dasharray")
    tips = titles(root)
    assert "2026-03-02 03:00 to 04:00 UTC: p95 1.50 s" in tips
    assert "2026-03-02 00:00 to 01:00 UTC: p50 10 ms" in tips
    circles = list(root.iter(f"{SVG}circle"))
    assert len(circles) == 3  # the p50 markers; p95 uses squares
    empty = parse(line_chart(hours(2), {"p50": [None, None]}, chart_id="e", title="t"))
    assert "No attempts in this window" in [t.text for t in empty.iter(f"{SVG}text")]


def test_sparkline_successes_up_failures_down() -> None:
    root = parse(sparkline(hours(3), [5, 0, 0], [0, 0, 5], chart_id="s1", label="24 h"))
    assert titles(root)[0] == "24 h: 5 succeeded, 5 failed"
    ok = next(r for r in root.iter(f"{SVG}rect") if r.get("class") == "wh-spark-ok")
    bad = next(
        r for r in root.iter(f"{SVG}rect") if r.get("class") == "wh-spark-failed"
    )
    middle = 15.0
    assert float(ok.get("y", 0)) + float(ok.get("height", 0)) == pytest.approx(middle)
    assert float(bad.get("y", 0)) == pytest.approx(middle)
    assert bad.get("fill") == "url(#s1-failed)"
    # Empty hours draw nothing but the baseline.
    assert (
        len([g for g in root.iter(f"{SVG}g") if g.get("class") == "wh-spark-bar"]) == 2
    )


def test_rate_bar() -> None:
    root = parse(rate_bar(3, 1, chart_id="r", width=100))
    assert titles(root)[0] == "75.0% succeeded (3 of 4)"
    widths = [r.get("width") for r in root.iter(f"{SVG}rect")]
    assert widths[-2:] == ["75", "25"]
    assert titles(parse(rate_bar(0, 0, chart_id="r0")))[0] == "no finished deliveries"


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, 1), (1, 1), (3, 5), (7, 10), (11, 20), (240, 250), (251, 500), (1001, 2000)],
)
def test_nice_ceiling(value: float, expected: float) -> None:
    assert nice_ceiling(value) == expected


def test_status_styles_differ_by_pattern() -> None:
    patterns = [p for _, p in STATUS_STYLES.values()]
    assert len(set(patterns)) == len(patterns)


def test_percentile_matches_linear_interpolation() -> None:
    values = sorted([12.0, 3.0, 7.0, 100.0, 40.0, 41.0, 5.0])
    assert percentile(values, 0.5) == statistics.median(values)
    q = statistics.quantiles(values, n=20, method="inclusive")
    assert percentile(values, 0.95) == pytest.approx(q[-1])
    assert percentile([], 0.5) is None
    assert percentile([4.0], 0.95) == 4.0


def test_window_buckets_and_index() -> None:
    now = dt.datetime(2026, 3, 2, 10, 17, tzinfo=dt.UTC)
    window = Window.last(24, now)
    assert window.start == dt.datetime(2026, 3, 1, 11, 0, tzinfo=dt.UTC)
    assert window.buckets[-1] == dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.UTC)
    assert window.index("2026-03-02 10:00:00") == 23
    assert window.index(dt.datetime(2026, 3, 1, 11, 0)) == 0
    assert window.index(dt.datetime(2026, 3, 1, 10, 0)) is None


def test_coarsen_sums_buckets() -> None:
    from flask_webhooks.admin.metrics import coarsen

    starts, (ok, failed) = coarsen(hours(12), [list(range(12)), [1] * 12], factor=6)
    assert starts == [START, START + dt.timedelta(hours=6)]
    assert ok == [15, 51] and failed == [6, 6]
    root = parse(
        sparkline(starts, ok, failed, chart_id="c", step=dt.timedelta(hours=6))
    )
    assert "2026-03-02 00:00 to 06:00 UTC: 15 succeeded, 6 failed" in titles(root)
