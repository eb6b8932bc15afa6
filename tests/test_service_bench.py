"""The service benchmark's quick mode runs and prints its figures (speed is for bench/)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.e2e
def test_engine_service_bench_quick_prints_latency_and_attach_figures():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "engine_service.py"), "--quick"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "event latency engine -> client over 100 events" in out
    assert "ratio service/bare: p50 x" in out
    assert "attach with 50 experiments in the journal, 1 time(s)" in out
    assert "first screen       worst" in out and "target < 1000 ms every time:" in out
