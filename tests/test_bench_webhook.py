"""``make bench-webhook`` in a tiny mode, so the script cannot rot: it completes with nothing lost or doubled.

Timing is never asserted: the figures are the benchmark's to print (README, "Figures").
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from devstack import ROOT

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.integration
def test_the_webhook_bench_completes_with_every_delivery_recorded_once(tmp_path: Path):
    command = [
        sys.executable, str(ROOT / "benchmarks" / "bench_webhook.py"),
        "--rate", "10", "--duration", "2", "--workers", "2", "--redeliveries", "0.2",
        "--database", f"openaddr_bench_webhook_test_{os.getpid()}", "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AIRFLOW", "OPENADDR"))}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    cases = re.findall(
        r"^== (\w+): 20 deliveries .*\((\d+) pushes, (\d+) pings, (\d+) redeliveries\)", result.stdout, re.M
    )
    assert [case[0] for case in cases] == ["postgresql", "sqlite"], result.stdout
    for _, pushes, pings, redeliveries in cases:
        assert int(pushes) + int(pings) + int(redeliveries) == 20
        assert int(redeliveries) > 0, result.stdout
    assert result.stdout.count("0 errors; 0 lost, 0 doubled") == 2, result.stdout
    recorded = re.findall(
        r"^recorded: (\d+) jobs, (\d+) DAG runs, (\d+) pending statuses", result.stdout, re.M
    )
    assert [(int(j), int(r), int(s)) for j, r, s in recorded] == [(int(c[1]),) * 3 for c in cases]
