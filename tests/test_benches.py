"""Benchmarks never rot: every bench/*.py runs in its --quick mode, completes and prints
figures. The figures themselves are never asserted (timing under load is noise); a new bench
is picked up by the glob. A bench whose quick run a test of its own already checks, line by
line, is run there and not again here."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e   # real runs through the evaluator

ROOT = Path(__file__).resolve().parent.parent
# bench -> the test file that runs its --quick mode and checks what it prints
CHECKED_ELSEWHERE = {"engine_service.py": "test_service_bench.py",
                     "eval_overhead.py": "test_evaluator.py",
                     "train_throughput.py": "test_training.py"}
BENCHES = [path for path in sorted((ROOT / "bench").glob("*.py"))
           if path.name not in CHECKED_ELSEWHERE]
QUICK_TIMEOUT_S = 580          # seconds on a quiet machine; minutes on a loaded 2-core one
FIGURE = re.compile(r"\d+(\.\d+)?")


def test_the_glob_finds_the_benches():
    assert {"keep_rule.py", "loop_efficiency.py"} <= {path.name for path in BENCHES}


@pytest.mark.parametrize("bench", sorted(CHECKED_ELSEWHERE))
def test_a_bench_left_out_here_is_run_quick_by_its_own_test(bench):
    test = (ROOT / "tests" / CHECKED_ELSEWHERE[bench]).read_text()
    assert (ROOT / "bench" / bench).exists()
    assert f'"{bench}"' in test and '"--quick"' in test


@pytest.mark.timeout(QUICK_TIMEOUT_S + 20)
@pytest.mark.parametrize("bench", BENCHES, ids=[path.stem for path in BENCHES])
def test_bench_quick_mode_completes_and_prints_figures(bench, tmp_path):
    if "--quick" not in bench.read_text():
        pytest.skip(f"{bench.name} has no --quick mode yet")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        proc = subprocess.run([sys.executable, str(bench), "--quick"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=QUICK_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{bench.name} --quick ran past {QUICK_TIMEOUT_S}s:\n"
                    f"{(exc.stdout or b'')[-2000:]!r}")
    assert proc.returncode == 0, (f"{bench.name} --quick exited {proc.returncode}:\n"
                                  f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    figures = [line for line in proc.stdout.splitlines() if FIGURE.search(line)]
    assert figures, f"{bench.name} --quick printed no figures:\n{proc.stdout[-2000:]}"
