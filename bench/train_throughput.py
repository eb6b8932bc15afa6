"""
Training throughput of the default CPU config against a naive port of the same model.

Each configuration is a real `train.py` subprocess for a fixed number of steps on the
prepared default dataset; tokens/s is the median over the steps after warm-up. The glibc
allocator setting only takes effect if it is in the environment before Python starts,
which is why every measured training runs in its own process, with or without it.

    python bench/train_throughput.py [--steps 40] [--quick]

Prints a table: tokens/s, MFU against the matmul peak measured here (bf16 for bf16
configurations, fp32 for fp32 ones), speed-up over the naive port, and peak memory.
train.py trains in bf16 only where the CPU has native bf16; there the table also shows fp32,
compiled, so the choice can be checked on each machine (bf16 where it is emulated is left
out: its matmul peak, printed, is a few hundred times below fp32's). --quick trains a
one-layer model on short rows, eager only, in seconds: it checks that the bench runs.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# The peak below is measured with sleeping OpenMP threads, as train.py trains: spinning ones
# under-measure it badly on a shared CPU. Every training runs with its own setting.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from engine.run.evaluation import evaluator_env, run_evaluator  # noqa: E402
from nanochat import REPORT_FILE, harness  # noqa: E402

TEMPLATE = REPO / "nanochat" / "train.py"
TUNED_MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(16 * 2**30)}
STEP_LINE = re.compile(r"step (\d+) .*?\| dt: (\d+)ms")
FLOPS_LINE = re.compile(r"flops/token: ([\d.e+]+)")
WARMUP_STEPS = 10  # compilation and allocator warm-up: not measured
MEMORY_LIMIT_MB = 4096
# Issue 12's targets: against the naive port, and as a fraction of the bf16 matmul peak.
TARGET_SPEEDUP = {"bf16": 3.0, "fp32": 2.0}
TARGET_BF16_MFU = 0.60

SLEEPING_THREADS = 'os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")\n'
# --quick: conftest's tiny model (one layer, width 64) on 64-token rows, a small eval set.
QUICK_CONSTANTS = {"DEPTH": "1", "ASPECT_RATIO": "64", "HEAD_DIM": "32",
                   "TOTAL_BATCH_SIZE": "256", "DEVICE_BATCH_SIZE": "4"}
QUICK_ENV = {"PAIRLAB_SEQ_LEN": "64", "PAIRLAB_EVAL_TOKENS": "4096"}
QUICK_STEPS, QUICK_WARMUP_STEPS = 6, 2


def write_variant(directory, precision, naive=False, quick=False):
    """train.py for one configuration (its precision comes from PAIRLAB_PRECISION, see
    run_training); naive: without the CPU speed-ups that are lines of train.py (sleeping
    OpenMP threads)."""
    source = TEMPLATE.read_text()
    assert SLEEPING_THREADS in source, "train.py's OMP_WAIT_POLICY line moved: update the bench"
    if naive:
        source = source.replace(SLEEPING_THREADS, "")
    if quick:
        for name, value in QUICK_CONSTANTS.items():
            source, count = re.subn(rf"^{name} = [^#\n]*?(\s*#)", rf"{name} = {value}\1", source,
                                    count=1, flags=re.M)
            assert count == 1, f"{name} not found in train.py: update the bench"
    path = directory / f"train_{precision}{'_naive' if naive else ''}.py"
    path.write_text(source)
    return path


def run_training(script, precision, steps, warmup_steps, compiled, tuned_malloc, extra_env):
    """precision: "shipped" (train.py's own rule), "bf16" or "fp32"."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k != "OMP_WAIT_POLICY"}
    env.update(PYTHONPATH=str(REPO), PAIRLAB_DEVICE="cpu", PAIRLAB_MAX_STEPS=str(steps),
               PAIRLAB_PRECISION="auto" if precision == "shipped" else precision,
               PAIRLAB_COMPILE="1" if compiled else "0", PAIRLAB_RUN_ID="bench",
               **extra_env)
    model_dir = script.parent / f"model-{time.monotonic_ns()}"
    env["PAIRLAB_MODEL"] = str(model_dir)
    if tuned_malloc:
        env.update(TUNED_MALLOC)
    proc = subprocess.run([sys.executable, str(script)], cwd=script.parent, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{script.name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    step_ms = [int(ms) for step, ms in STEP_LINE.findall(proc.stdout) if int(step) >= warmup_steps]
    reported = json.loads((model_dir / REPORT_FILE).read_text())
    # val_bpb as pairlab scores it: the evaluator, on the handed-over model.
    scored = run_evaluator(model_dir, evaluator_env(env, harness.data_dir()))
    if scored.returncode != 0:
        sys.exit(f"the evaluator failed on {script.name}:\n" + "\n".join(scored.lines[-20:]))
    tokens_per_step = reported["total_tokens"] // steps
    return {
        "tokens_per_sec": tokens_per_step / (statistics.median(step_ms) / 1000),
        "flops_per_token": float(FLOPS_LINE.search(proc.stdout).group(1)),
        "peak_memory_mb": reported["peak_memory_mb"],
        "val_bpb": json.loads(scored.result)["val_bpb"],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="training steps per configuration")
    parser.add_argument("--quick", action="store_true",
                        help="tiny model, eager only, a few steps: seconds, to check the bench runs")
    args = parser.parse_args()
    if not (harness.data_dir() / "meta.json").is_file():
        sys.exit(f"no prepared data at {harness.data_dir()}: run `pairlab prepare`")
    steps, warmup_steps = (QUICK_STEPS, QUICK_WARMUP_STEPS) if args.quick else (args.steps, WARMUP_STEPS)
    if steps <= warmup_steps:
        sys.exit(f"--steps {steps}: needs more than the {warmup_steps} warm-up steps it does not measure")

    print(f"peak matmul throughput on this machine ({torch.get_num_threads()} threads):")
    size, seconds = (256, 0.2) if args.quick else (2048, 2.0)
    peaks = {
        True: harness.measure_matmul_flops(torch.bfloat16, size=size, seconds=seconds),
        False: harness.measure_matmul_flops(torch.float32, size=size, seconds=seconds),
    }
    print(f"  bf16 {peaks[True] / 1e9:7.1f} GFLOP/s   fp32 {peaks[False] / 1e9:7.1f} GFLOP/s   "
          f"(native bf16: {'yes' if harness.cpu_has_native_bf16() else 'no'})")
    print(f"load average before the runs: {os.getloadavg()[0]:.2f} "
          "(other processes on these cores slow every row)\n")

    shipped = "bf16" if harness.cpu_has_native_bf16() else "fp32"
    other = "fp32" if shipped == "bf16" else "bf16"
    # name, precision, naive, torch.compile, tuned malloc
    configs = [
        ("naive port: fp32, eager, spinning threads", "fp32", True, False, False),
        (f"{shipped} (shipped), eager, default malloc", shipped, False, False, False),
        (f"{shipped} (shipped), eager, tuned malloc", shipped, False, False, True),
        (f"{other} autocast, compiled, tuned malloc", other, False, True, True),
        (f"default: {shipped}, compiled, tuned malloc", "shipped", False, True, True),
    ]
    if args.quick:  # compiling takes longer than the whole quick run; a tiny model trains
        # in seconds on either path, emulated bf16 included
        configs = [config for config in configs if not config[3]]
        configs.append((f"{other} autocast, eager, tuned malloc", other, False, False, True))
    elif shipped == "fp32":
        # bf16 without native support is emulated (the peak above): a row would take hours
        configs = [config for config in configs if config[1] != "bf16"]
        print("  (no bf16 row: this CPU emulates bf16, see its peak above)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="pairlab-bench-") as tmp:
        for name, precision, naive, compiled, tuned_malloc in configs:
            print(f"  running {name} ...", flush=True)
            script = write_variant(Path(tmp), precision, naive=naive, quick=args.quick)
            measured = run_training(script, precision, steps, warmup_steps, compiled, tuned_malloc,
                                    QUICK_ENV if args.quick else {})
            bf16 = precision == "bf16" or (precision == "shipped" and shipped == "bf16")
            measured["mfu"] = measured["flops_per_token"] * measured["tokens_per_sec"] / peaks[bf16]
            rows.append((name, measured, precision in ("shipped", shipped)))

    naive = rows[0][1]["tokens_per_sec"]
    rows_shipped = [(name, m) for name, m, is_shipped in rows if is_shipped]
    print(f"\n{'configuration':<42} {'tok/s':>9} {'MFU':>7} {'vs naive':>9} {'peak MB':>8} {'val_bpb':>8}")
    print("-" * 88)
    for name, m, _ in rows:
        print(f"{name:<42} {m['tokens_per_sec']:>9,.0f} {100 * m['mfu']:>6.1f}% "
              f"{m['tokens_per_sec'] / naive:>8.2f}x {m['peak_memory_mb']:>8.0f} {m['val_bpb']:>8.4f}")
    last_name, last = rows_shipped[-1]   # the default's row, or in --quick the last eager one
    speedup = last["tokens_per_sec"] / naive
    target = TARGET_SPEEDUP[shipped]
    print(f"\n{last_name.split(':')[0]} vs naive port: {speedup:.2f}x (target on a CPU "
          f"{'with' if shipped == 'bf16' else 'without'} native bf16 >= {target}x: "
          f"{'met' if speedup >= target else 'NOT met'})")
    if shipped == "bf16":
        print(f"MFU against the bf16 matmul peak: {100 * last['mfu']:.1f}% (target >= "
              f"{100 * TARGET_BF16_MFU:.0f}%: {'met' if last['mfu'] >= TARGET_BF16_MFU else 'NOT met'})")
    print(f"peak memory: {last['peak_memory_mb']:.0f} MB "
          f"(limit {MEMORY_LIMIT_MB} MB: {'ok' if last['peak_memory_mb'] < MEMORY_LIMIT_MB else 'EXCEEDED'})")
    print(f"(val_bpb after {steps} steps, evaluated on the fixed validation set"
          f"{' of --quick' if args.quick else ''})")


if __name__ == "__main__":
    main()
