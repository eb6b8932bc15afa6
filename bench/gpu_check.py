"""
The GPU check: what a GPU box does with pairlab, in one prepared script, under 5 minutes.

1. The shipped train.py, untouched, for a minute with torch.compile and bf16 (the harness's
   choice on CUDA), through the protected hand-off to the evaluator: tok/s, MFU against the
   datasheet peak, val_bpb, and where the seconds went.
2. A 3-experiment loop in auto mode (the offline tuner) on a fresh workspace at a shorter
   budget: every run's outcome and every keep-rule verdict.

    python bench/gpu_check.py [--data DIR] [--budget 60] [--loop-budget 20] [--quick]

--data: a prepared dataset folder (default: the prepared default one; a GPU box without a
network needs it carried over). --quick: the tests' tiny model on the CPU for a few steps,
in seconds: it checks that the script runs. Exits 1 if any stage fails.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.run import doctor  # noqa: E402
from engine.agents.tuner import TunerAgent  # noqa: E402
from engine.base.events import (DecisionMade, ExperimentSettled, RunFinished,  # noqa: E402
                                SessionStopped)
from engine.base.records import RunStatus  # noqa: E402
from engine.run.runner import Runner  # noqa: E402
from engine.session import Session, SessionSettings  # noqa: E402
from engine.workspace import init  # noqa: E402
from nanochat import prepare  # noqa: E402

TARGET_S = 5 * 60
TOKENS_PER_SEC = re.compile(r"step (\d+) .*?tok/sec: ([\d,]+)")
WARMUP_STEPS = 10                 # train.py's untimed compile steps: not in the median
LOOP_EVAL_TOKENS = str(2**20)     # the loop's runs score fewer tokens: minutes, not hours
QUICK_STEPS = 4
EXPERIMENTS = 3                   # --quick: 1, the loop's shape without its minutes


def machine() -> str:
    import torch

    from nanochat import harness
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        peak = harness.datasheet_peak(name, torch.bfloat16)
        peak_text = f"bf16 peak {peak / 1e12:.1f} TFLOP/s (datasheet)" if peak else \
            "bf16 peak measured by the run (no datasheet figure for this GPU)"
        return f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}, {peak_text}"
    return f"no GPU: {harness.DEVICE}, torch {torch.__version__} (the figures are the CPU's)"


def template_run(root: Path, data_dir: Path, budget: float, quick: bool) -> bool:
    """Stage 1: the template through the runner, confined where the kernel allows it."""
    env = {"PAIRLAB_COMPILE": "1"}
    if quick:
        (root / "train.py").write_text(doctor.tiny_source((root / "train.py").read_text(), "cpu"))
        env = {**doctor.TINY_ENV, "PAIRLAB_MAX_STEPS": str(QUICK_STEPS), "PAIRLAB_DEVICE": "cpu"}
    runner = Runner(root, "gpu-check", budget, env=env, data_dir=data_dir,
                    log_path=root / "template.log", cache_dir=root / "cache")
    started = time.monotonic()
    result = runner.run()
    took = time.monotonic() - started
    log = (root / "template.log").read_text(errors="replace")
    rates = [int(rate.replace(",", "")) for step, rate in TOKENS_PER_SEC.findall(log)
             if int(step) >= (0 if quick else WARMUP_STEPS)]
    header = next((line for line in log.splitlines() if line.startswith("device:")), "")
    print(f"1. the template, {'tiny config, ' if quick else ''}budget {budget:g}s, compile "
          f"{'off' if quick else 'on'}: {header}")
    if result.status is not RunStatus.MEASURED:
        print(f"   FAILED: {result.status.value}: {result.message}")
        print("\n".join(f"   | {line}" for line in log.splitlines()[-20:]))
        return False
    metrics = result.metrics
    print(f"   tok/s (median of timed steps): {statistics.median(rates):,.0f}" if rates else
          "   tok/s: no timed step")
    print(f"   MFU: {metrics.get('mfu_percent', float('nan')):.2f}%   peak memory: "
          f"{metrics.get('peak_memory_mb', 0):,.0f} MB   steps: {result.num_steps}")
    print(f"   val_bpb {result.val_bpb:.6f} from the evaluator ({metrics['eval_tokens']:,} "
          f"tokens, {metrics['eval_seconds']:.1f}s); handed off and scored "
          f"{'confined' if result.confined else 'unconfined'}")
    print(f"   seconds: {took:.1f} in all, {result.training_seconds:.1f} the training process "
          f"(compile and warm-up included), {metrics['eval_seconds']:.1f} the evaluator")
    return True


def loop_run(root: Path, data_dir: Path, budget: float, quick: bool) -> bool:
    """Stage 2: baseline and 3 experiments (1 in --quick), auto mode, the tuner; every
    verdict printed."""
    experiments = 1 if quick else EXPERIMENTS
    ws = init(root, tag="gpu-check")
    env = {"PAIRLAB_EVAL_TOKENS": LOOP_EVAL_TOKENS}
    if quick:
        train = ws.root / "train.py"
        ws.commit_change({"train.py": doctor.tiny_source(train.read_text(), "cpu")},
                         "tiny config", parent=ws.head())
        env = {**doctor.TINY_ENV, "PAIRLAB_PRECISION": "fp32"}
    device = "cpu" if quick else None
    settings = SessionSettings(mode="auto", budget_s=budget, max_experiments=experiments,
                               noise_repeats=0,
                               device=device, data_dir=data_dir, extra_env=env,
                               max_steps=QUICK_STEPS if quick else None, speculate=False,
                               first_start_check=False)   # stage 1 checked the pipeline
    session = Session(ws, TunerAgent(device=device or "cuda"), settings, monitor=False)
    stopped = threading.Event()
    started = time.monotonic()

    def show(event) -> None:
        at = f"{time.monotonic() - started:6.1f}s"
        if isinstance(event, RunFinished):
            r, e = event.result, event.experiment
            bpb = f"{r.val_bpb:.6f}" if r.val_bpb is not None else "-"
            why = f" ({r.message})" if r.message else ""
            print(f"   {at} {r.run_id} {e.kind:10} {e.description[:40]:40} {r.status.value:9} "
                  f"val_bpb {bpb}{why}", flush=True)
        elif isinstance(event, ExperimentSettled):
            e = event.experiment
            m = e.measure
            evidence = (f" (n {m.n_candidate} vs {m.n_best}, improvement {m.improvement:+.6f},"
                        f" margin {m.margin:.6f})" if m is not None and m.margin is not None
                        else "")
            print(f"   {at} verdict on #{e.proposal_id}: {e.status.value}{evidence}", flush=True)
        elif isinstance(event, DecisionMade):
            print(f"   {at} #{event.decision.proposal_id}: {event.decision.kind.value} by "
                  f"{event.decision.who}", flush=True)
        elif isinstance(event, SessionStopped):
            print(f"   {at} stopped: {event.reason}; {event.summary}", flush=True)
            stopped.set()

    print(f"\n2. a {experiments}-experiment loop, auto mode, the offline tuner, budget "
          f"{budget:g}s:")
    session.subscribe(show)
    session.start()
    stopped.wait()
    session.stop()
    runs = session.journal.run_rows()
    session.journal.close()
    return not session.failed and sum(r["kind"] == "experiment" for r in runs) == experiments


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="a prepared dataset folder")
    parser.add_argument("--budget", type=float, default=60.0, help="stage 1's training seconds")
    parser.add_argument("--loop-budget", type=float, default=20.0,
                        help="training seconds of each of stage 2's runs")
    parser.add_argument("--quick", action="store_true", help="tiny model on the CPU: seconds")
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pairlab-gpu-check-") as tmp:
        tmp = Path(tmp)
        if args.quick:
            data_dir = prepare.prepare_dataset("default", cache_dir=prepare.resolve_cache_dir(),
                                               vocab_size=512, max_bytes=1_000_000,
                                               out_dir=tmp / "data")
        else:
            data_dir = args.data or prepare.default_dataset_dir()
        if not prepare.is_prepared(data_dir):
            print(f"no prepared data at {data_dir}: run `pairlab prepare` (or pass --data)")
            return 1
        print(f"gpu_check: {machine()}\ndata: {data_dir} "
              f"({json.loads((data_dir / 'meta.json').read_text())['train_tokens']:,} "
              f"training tokens)\n")
        stage = tmp / "template"
        stage.mkdir()
        import nanochat
        (stage / "train.py").write_text((Path(nanochat.__file__).parent / "train.py").read_text())
        ok = template_run(stage, data_dir, args.budget, args.quick)
        ok = loop_run(tmp / "loop", data_dir, args.loop_budget, args.quick) and ok
    took = time.monotonic() - started
    print(f"\ntotal {took:.0f}s ({took / 60:.1f} min; target under {TARGET_S // 60} min: "
          f"{'met' if took < TARGET_S else 'NOT met'}); "
          f"{'every stage passed' if ok else 'a stage FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
