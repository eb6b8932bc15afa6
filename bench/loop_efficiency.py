"""How busy does the loop keep the trainer? Pipelined (pairlab) vs sequential (autoresearch),
and in review mode with a human who takes their time, with and without speculative training.

Every loop runs the real Session (real git workspace, journal, runner subprocesses) with a
fake agent that takes AGENT_SECONDS to draft, like an LLM would, and a stand-in train.py
that "trains" for the budget and reports a summary line. Busy fraction = time inside runs /
wall time from the first run's start to the last run's end (auto mode), or from the
baseline's end to the last run's end (review mode: the human's first proposal waits on
nothing but the human then).

    python bench/loop_efficiency.py [--quick] [--runs 8] [--budget 4] [--agent-seconds 2]
                                    [--review-runs 5] [--review-budget 20] [--decide 30]

Targets: >= 97% busy pipelined in steady state; in review mode, with a human who decides
30 s after each proposal is ready and runs of 20 s, >= 95% busy with speculation.
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

from engine.base.commands import CommandRefused  # noqa: E402
from engine.base.events import ProposalReady, RunFinished, RunStarted  # noqa: E402
from engine.base.records import Draft  # noqa: E402
from engine.session import Session, SessionSettings  # noqa: E402
from engine.workspace import init  # noqa: E402
from nanochat import prepare  # noqa: E402

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


class TimedFakeAgent:
    """Drafts in `seconds`, like an LLM; `change` says what draft number `count` edits."""

    name = "fake"

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.count = 0

    def draft(self, ctx, emit, cancel):
        self.count += 1
        if cancel.wait(self.seconds):
            from engine.agents.base import DraftCancelled
            raise DraftCancelled()
        description, source = self.change(ctx.files["train.py"])
        emit("text", description + "\n")
        return Draft(description=description, hypothesis="bench", files={"train.py": source})

    def change(self, source: str) -> tuple[str, str]:
        raise NotImplementedError


class SlowFakeAgent(TimedFakeAgent):
    """Each draft scales one knob (up: kept, down: not).

    Successive drafts touch different knobs, so a draft made against the old best rebases
    onto the new one; that is the case pipelining is for (a conflicting draft is redrafted).
    """

    def change(self, source: str) -> tuple[str, str]:
        knob = "ABCD"[self.count % 4]
        value = float(re.search(rf"^{knob} = ([\d.e-]+)", source, re.M).group(1))
        new_value = value * (1.5 if self.count % 3 else 0.9)
        new = re.sub(rf"^{knob} = [\d.e-]+", f"{knob} = {new_value:.6g}", source, count=1,
                     flags=re.M)
        return f"{knob} {value:g} -> {new_value:g}", new


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


def bench_workspace(tmp: str):
    """A workspace whose train.py is the stand-in, and a dataset dir the check accepts."""
    template = Path(tmp) / "train.py"
    template.write_text(STAND_IN_TRAIN)
    program = Path(tmp) / "program.md"
    program.write_text("bench\n")
    ws = init(Path(tmp) / "ws", tag="bench",
              templates={"train.py": template, "program.md": program})
    ws.config.metric_source = "summary_line"   # a stand-in hands over no model to score
    ws.config.save(ws.config_path)
    return ws, stand_in_data(Path(tmp) / "data")


def measure(runs: int, budget: float, agent_seconds: float, drafts_ahead: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        ws, data_dir = bench_workspace(tmp)
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


def measure_review(runs: int, budget: float, agent_seconds: float, decide_s: float,
                   speculate: bool) -> dict:
    """Review mode: a scripted human accepts each proposal `decide_s` after it is ready."""
    with tempfile.TemporaryDirectory() as tmp:
        ws, data_dir = bench_workspace(tmp)
        settings = SessionSettings(mode="review", budget_s=budget, max_experiments=runs,
                                   noise_repeats=0, data_dir=data_dir, speculate=speculate,
                                   large_win_sigmas=None, large_win_fraction=None,
                                   hard_timeout_s=budget * 4 + 30)
        session = Session(ws, SlowFakeAgent(agent_seconds), settings, monitor=False)
        spans: dict[str, list[float]] = {}
        timers: list[threading.Timer] = []
        lock = threading.Lock()

        def accept(proposal_id: int) -> None:
            try:
                session.accept(proposal_id)
            except CommandRefused:
                pass                      # went stale meanwhile, or the loop stopped

        def on_event(event):
            with lock:
                if isinstance(event, RunStarted):
                    spans[event.run_id] = [time.perf_counter(), 0.0]
                elif isinstance(event, RunFinished) and event.result.run_id in spans:
                    spans[event.result.run_id][1] = time.perf_counter()
                elif isinstance(event, ProposalReady):
                    timer = threading.Timer(decide_s, accept, (event.proposal.id,))
                    timer.daemon = True
                    timers.append(timer)
                    timer.start()

        session.subscribe(on_event)
        session.start()
        session.wait()
        session.stop()
        for timer in timers:
            timer.cancel()
    ordered = sorted(spans.values())
    start, end = ordered[0][1], max(e for _, e in ordered)   # from the baseline's end
    busy = _union([(max(s, start), e) for s, e in ordered[1:] if e > start])
    return {"busy": busy / (end - start), "wall": end - start, "runs": len(ordered) - 1}


def _union(spans: list[tuple[float, float]]) -> float:
    """Seconds covered by at least one span."""
    total, reach = 0.0, float("-inf")
    for s, e in sorted(spans):
        if e > reach:
            total += e - max(s, reach)
            reach = e
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--budget", type=float, default=4.0)
    parser.add_argument("--agent-seconds", type=float, default=2.0)
    parser.add_argument("--review-runs", type=int, default=5)
    parser.add_argument("--review-budget", type=float, default=20.0)
    parser.add_argument("--decide", type=float, default=30.0,
                        help="review mode: seconds the human takes after each proposal")
    parser.add_argument("--quick", action="store_true",
                        help="3 runs of 0.5 s, drafts of 0.25 s: seconds, for the test suite")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.budget, args.agent_seconds = 3, 0.5, 0.25
        args.review_runs, args.review_budget, args.decide = 2, 0.5, 0.75
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

    print(f"\nreview mode: {args.review_runs} experiments of {args.review_budget:g}s, a human "
          f"who accepts each proposal {args.decide:g}s after it is ready\n")
    print(f"{'loop':<26}{'busy':>8}{'wall s':>9}{'runs':>6}")
    review = {}
    for label, speculate in (("waits for the human", False), ("speculative", True)):
        r = measure_review(args.review_runs, args.review_budget, args.agent_seconds,
                           args.decide, speculate)
        review[label] = r
        print(f"{label:<26}{r['busy']:>8.1%}{r['wall']:>9.1f}{r['runs']:>6}")
    print(f"\nreview mode busy: {review['speculative']['busy']:.1%} with speculation "
          f"(target >= 95%), {review['waits for the human']['busy']:.1%} without; wall time "
          f"{review['speculative']['wall'] / review['waits for the human']['wall']:.2f}x")


if __name__ == "__main__":
    main()
