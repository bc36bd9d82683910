"""The benchmark scripts still run: each at a tiny size, its last line JSON
with the figures the benchmarks issue names. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CASES = {
    "capture_overhead": (
        ["--objects", "50", "--rounds", "1", "--small", "0"],
        {"baseline_s", "unsubscribed_ratio", "one_webhook_ratio", "ten_webhooks_ratio"},
    ),
    "delivery_throughput": (
        ["--deliveries", "30", "--queue", "sqlite", "--rounds", "1"],
        {"raw_rps", "webhooks_rps", "ratio", "threads", "queue"},
    ),
    "latency": (
        ["--events", "5", "--queue", "sqlite", "--gap", "0.01"],
        {"p50_ms", "p99_ms", "raw_p50_ms", "p50_ratio"},
    ),
    "transport_cpu": (
        ["--requests", "20", "--rounds", "1"],
        {"transport_cpu_us", "session_post_cpu_us", "transport_over_session_post"},
    ),
    "admin_pages": (
        ["--rows", "600", "--rounds", "1"],
        {"status_24h_ms", "status_7d_ms", "status_24h_ratio", "webhook_list_ms"},
    ),
    "memory": (
        ["--objects", "200", "--deliveries", "60", "--rounds", "1"],
        {"commit_peak_ratio", "worker_rss_growth"},
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("script", CASES)
def test_benchmark_script_prints_its_figures(script: str, tmp_path: Path) -> None:
    args, keys = CASES[script]
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert keys <= set(figures)
    assert all(figures[k] is not None for k in keys if k.endswith("ratio"))
