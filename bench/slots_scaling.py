"""Does the loop scale with trainer slots? Experiments per hour with K = 1, 2 and 4 slots.

Each row runs the real Session (real git worktrees, journal, runner subprocesses) in auto
mode with a stand-in train.py that sleeps for the budget (so the cores are not the limit)
and a fast fake agent whose every change makes val_bpb worse, so each experiment is one run,
judged at once. Every row does the same work, the same number of experiments (and so the
same re-runs of the best that follow drift, one per `best_rerun_every` experiments), so the
rows differ only in K. Experiments per hour = experiments / wall time from the first
experiment's start to the last one's end. All rows in the same run, reported against K=1.

    python bench/slots_scaling.py [--quick] [--budget 4] [--experiments 24] [--agent-seconds 0.1]

Target: K slots >= 0.9 x K times the experiments per hour of one slot.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.loop_efficiency import TimedFakeAgent, bench_workspace  # noqa: E402
from engine.base.events import RunFinished, RunStarted  # noqa: E402
from engine.session import Session, SessionSettings  # noqa: E402

SLOT_COUNTS = (1, 2, 4)


class LosingAgent(TimedFakeAgent):
    """Each draft lowers knob A a little more, which the stand-in scores worse: every
    experiment is discarded at once, with no confirmation runs."""

    def change(self, source: str) -> tuple[str, str]:
        value = 0.01 * (1 - 0.01 * self.count)
        return f"A -> {value:.6g}", source.replace("A = 0.01", f"A = {value:.6g}", 1)


def measure(slots: int, experiments: int, budget: float, agent_seconds: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        ws, data_dir = bench_workspace(tmp)
        settings = SessionSettings(mode="auto", slots=slots, budget_s=budget,
                                   max_experiments=experiments, noise_repeats=0,
                                   data_dir=data_dir, hard_timeout_s=budget * 4 + 30)
        session = Session(ws, LosingAgent(agent_seconds), settings, monitor=False)
        spans: dict[str, list[float]] = {}
        lock = threading.Lock()

        def on_event(event):
            with lock:
                if isinstance(event, RunStarted) and event.proposal_id is not None:
                    spans[event.run_id] = [time.perf_counter(), 0.0]
                elif isinstance(event, RunFinished) and event.result.run_id in spans:
                    spans[event.result.run_id][1] = time.perf_counter()

        session.subscribe(on_event)
        session.start()
        session.wait()
        session.stop()
        judged = session.journal.experiment_count()
    wall = max(e for _, e in spans.values()) - min(s for s, _ in spans.values())
    return {"experiments": judged, "wall": wall, "per_hour": judged / wall * 3600}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=4.0)
    parser.add_argument("--experiments", type=int, default=24,
                        help="experiments in each row (the same work at every K)")
    parser.add_argument("--agent-seconds", type=float, default=0.1)
    parser.add_argument("--quick", action="store_true",
                        help="8 experiments of 0.5 s per row: seconds, for the test suite")
    args = parser.parse_args()
    if args.quick:
        args.budget, args.experiments, args.agent_seconds = 0.5, 8, 0.05
    print(f"stand-in runs of {args.budget:g}s, {args.experiments} experiments per row, agent "
          f"drafts in {args.agent_seconds:g}s\n")
    print(f"{'slots':<8}{'experiments':>12}{'wall s':>9}{'per hour':>10}{'x one slot':>12}"
          f"{'target':>8}")
    one = None
    for slots in SLOT_COUNTS:
        r = measure(slots, args.experiments, args.budget, args.agent_seconds)
        one = one or r["per_hour"]
        ratio = r["per_hour"] / one
        print(f"{slots:<8}{r['experiments']:>12}{r['wall']:>9.1f}{r['per_hour']:>10.0f}"
              f"{ratio:>12.2f}{0.9 * slots:>8.1f}")


if __name__ == "__main__":
    main()
