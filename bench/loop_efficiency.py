"""How busy does the loop keep the trainer? Pipelined (pairlab) vs sequential (autoresearch).

Both loops run the real Session (real git workspace, journal, runner subprocesses) with a
fake agent that takes AGENT_SECONDS to draft, like an LLM would, and a stand-in train.py
that "trains" for the budget and writes a harness-style result file. Busy fraction = time
inside runs / wall time from the first run's start to the last run's end.

    python bench/loop_efficiency.py [--quick] [--runs 8] [--budget 4] [--agent-seconds 2]

Target: >= 97% busy pipelined in steady state.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.events import RunFinished, RunStarted                    # noqa: E402
from engine.records import Draft                                     # noqa: E402
from engine.session import Session, SessionSettings                  # noqa: E402
from engine.workspace import init                                    # noqa: E402
from nanochat import prepare                                         # noqa: E402

# A train.py that spends the budget "training" and reports through the result file, so the
# figures measure the loop, not the model. val_bpb falls with LR, so some runs are kept.
STAND_IN_TRAIN = '''\
import os, time

A = 0.01  # four knobs, far enough apart that edits to different ones rebase cleanly


B = 0.01


C = 0.01


D = 0.01

budget = float(os.environ["PAIRLAB_TIME_BUDGET"])
start = time.time()
step = 0
while time.time() - start < budget:
    time.sleep(0.05)
    step += 1
    pct = 100 * (time.time() - start) / budget
    print(f"\\rstep {step:05d} ({pct:.1f}%) | loss: 3.000000 | remaining: {budget - (time.time() - start):.0f}s", end="", flush=True)
print()
val_bpb = 2.0 - min(A + B + C + D, 1.0) * 0.1
print("---")
print(f"val_bpb:          {val_bpb:.6f}")   # the summary block: the loop, not the evaluator, is measured
'''


class SlowFakeAgent:
    """Drafts in `seconds`, like an LLM; each draft scales one knob (up: kept, down: not).

    Successive drafts touch different knobs, so a draft made against the old best rebases
    onto the new one; that is the case pipelining is for (a conflicting draft is redrafted).
    """

    name = "fake"

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.count = 0

    def draft(self, ctx, emit, cancel):
        self.count += 1
        if cancel.wait(self.seconds):
            from engine.agents.base import DraftCancelled
            raise DraftCancelled()
        source = ctx.files["train.py"]
        knob = "ABCD"[self.count % 4]
        value = float(re.search(rf"^{knob} = ([\d.e-]+)", source, re.M).group(1))
        new_value = value * (1.5 if self.count % 3 else 0.9)
        emit("text", f"{knob} {value:g} -> {new_value:g}\n")
        new = re.sub(rf"^{knob} = [\d.e-]+", f"{knob} = {new_value:.6g}", source, count=1,
                     flags=re.M)
        return Draft(description=f"{knob} {value:g} -> {new_value:g}", hypothesis="bench",
                     files={"train.py": new})


def stand_in_data(directory: Path) -> Path:
    """A dataset directory the engine's data check accepts (sizes, format, checksum), with
    nothing in it worth training on: the stand-in train.py never reads it."""
    directory.mkdir()
    tokens = 16
    for name, size in (("train.bin", 2 * tokens), ("val.bin", 2 * tokens),
                       ("tokenizer.pkl", 8), ("token_bytes.npy", 8)):
        (directory / name).write_bytes(bytes(size))
    meta = {"format": prepare.FORMAT, "train_tokens": tokens, "val_tokens": tokens,
            "checksum": prepare.dataset_checksum(directory)}
    (directory / "meta.json").write_text(json.dumps(meta))
    return directory


def measure(runs: int, budget: float, agent_seconds: float, drafts_ahead: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        template = Path(tmp) / "train.py"
        template.write_text(STAND_IN_TRAIN)
        program = Path(tmp) / "program.md"
        program.write_text("bench\n")
        ws = init(Path(tmp) / "ws", tag="bench",
                  templates={"train.py": template, "program.md": program})
        ws.config.metric_source = "summary_line"   # a stand-in hands over no model to score
        ws.config.save(ws.config_path)
        data_dir = stand_in_data(Path(tmp) / "data")
        settings = SessionSettings(mode="auto", budget_s=budget, max_experiments=runs,
                                   noise_repeats=0, drafts_ahead=drafts_ahead,
                                   data_dir=data_dir, hard_timeout_s=budget * 4 + 30)
        session = Session(ws, SlowFakeAgent(agent_seconds), settings, monitor=False)
        spans: list[list[float]] = []
        lock = threading.Lock()

        def on_event(event):
            with lock:
                if isinstance(event, RunStarted):
                    spans.append([time.perf_counter(), 0.0])
                elif isinstance(event, RunFinished):
                    spans[-1][1] = time.perf_counter()

        session.subscribe(on_event)
        session.start()
        session.wait()
        session.stop()
    experiment_spans = spans[1:]            # the baseline has no draft before it
    busy = sum(end - start for start, end in experiment_spans)
    wall = experiment_spans[-1][1] - experiment_spans[0][0]
    gaps = [b[0] - a[1] for a, b in zip(spans, spans[1:])]
    # steady state: leave out the first experiment, whose draft overlaps the baseline
    steady = experiment_spans[1:]
    steady_busy = sum(e - s for s, e in steady) / (steady[-1][1] - steady[0][0])
    return {"busy": busy / wall, "steady": steady_busy, "wall": wall,
            "mean_gap": sum(gaps) / len(gaps), "max_gap": max(gaps)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--budget", type=float, default=4.0)
    parser.add_argument("--agent-seconds", type=float, default=2.0)
    parser.add_argument("--quick", action="store_true",
                        help="3 runs of 1 s, drafts of 0.5 s: seconds, for the test suite")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.budget, args.agent_seconds = 3, 1.0, 0.5
    print(f"{args.runs} experiments of {args.budget:g}s each, agent drafts in "
          f"{args.agent_seconds:g}s\n")
    print(f"{'loop':<26}{'busy':>8}{'steady':>9}{'wall s':>9}{'mean gap s':>12}{'max gap s':>11}")
    results = {}
    for label, ahead in (("sequential (autoresearch)", 0), ("pipelined (pairlab)", 1)):
        r = measure(args.runs, args.budget, args.agent_seconds, ahead)
        results[label] = r
        print(f"{label:<26}{r['busy']:>8.1%}{r['steady']:>9.1%}{r['wall']:>9.1f}"
              f"{r['mean_gap']:>12.3f}{r['max_gap']:>11.3f}")
    seq, pipe = results["sequential (autoresearch)"], results["pipelined (pairlab)"]
    print(f"\npipelined wall time is {pipe['wall'] / seq['wall']:.2f}x sequential; "
          f"steady-state busy {pipe['steady']:.1%} (target >= 97%)")


if __name__ == "__main__":
    main()
