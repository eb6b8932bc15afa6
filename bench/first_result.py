"""How long does a new user wait for the first judged experiment?

A fresh workspace (engine.workspace.init, the shipped templates), the offline tuner in auto
mode, the workspace's default settings (budget, noise repeats) as `make run` uses them, and
data and the compile seed from the prepared cache (prepared before the clock starts, as
`make prepare` leaves them). The clock runs from
Session.start() to the RunFinished of the first experiment (a run with a proposal), through
the public Session API and its events; every run on the way is listed.

    python bench/first_result.py [--quick] [--budget S] [--noise-repeats N] [--no-seed]

--quick: the tests' tiny model for 6 steps on a small dataset, no noise repeats unless
asked: seconds, for the test suite.
Target (full mode, 2-core CPU): first judged result within 6 minutes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.agents.tuner import TunerAgent  # noqa: E402
from engine.base.events import (LogLines, RunFinished, RunProgress, RunStarted,  # noqa: E402
                                SessionStopped)
from engine.run.compile_cache import write_seed  # noqa: E402
from engine.session import Session, SessionSettings  # noqa: E402
from engine.workspace import init  # noqa: E402
from nanochat import prepare  # noqa: E402

TARGET_S = 6 * 60
# setup: process start, imports, data, model (to train.py's first line); compile: step 0;
# warm-up: the untimed steps after it; timed: the budget; hand-off: the export and exit;
# evaluate: the evaluator; engine: the rest (folders, judging, git, journal).
PHASES = ("setup", "compile", "warm-up", "timed", "hand-off", "evaluate", "engine")


@dataclass
class RunTimes:
    """Seconds since the clock started at which one run's events arrived."""
    label: str
    start: float
    first_line: float | None = None
    first_step: float | None = None
    timed_from: float | None = None
    last_step: float | None = None
    end: float | None = None
    status: str = ""
    training_s: float | None = None   # the training process's wall time (engine clock)
    total_s: float | None = None      # with the evaluator

    def phases(self) -> list[float | None]:
        marks = [self.start, self.first_line, self.first_step, self.timed_from,
                 self.last_step]
        spans = [b - a if a is not None and b is not None else None
                 for a, b in zip(marks, marks[1:])]
        exited = self.start + self.training_s if self.training_s else None
        evaluate = self.total_s - self.training_s if self.total_s and self.training_s else None
        engine = self.end - self.start - self.total_s if self.end and self.total_s else None
        handoff = exited - self.last_step if exited and self.last_step else None
        return [*spans, handoff, evaluate, engine]


def tiny_setup(tmp: Path) -> tuple[Path, dict]:
    """The test suite's tiny config and dataset (tests/conftest.py)."""
    from tests.conftest import TINY_ENV
    data = prepare.prepare_dataset("default", cache_dir=prepare.resolve_cache_dir(),
                                   vocab_size=512, max_bytes=1_000_000, out_dir=tmp / "data")
    return data, dict(TINY_ENV)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, 6 steps, seconds")
    parser.add_argument("--budget", type=float, default=None,
                        help="training seconds per run (default: the workspace's)")
    parser.add_argument("--noise-repeats", type=int, default=None,
                        help="extra baseline runs (default: the workspace's)")
    parser.add_argument("--no-seed", action="store_true",
                        help="no prepared compile cache: the first compile in the workspace is cold")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        ws = init(tmp / "ws", tag="bench")
        config = ws.config
        if args.quick:
            from tests.conftest import tiny_train_py
            data_dir, env = tiny_setup(tmp)
            train = ws.root / "train.py"
            ws.commit_change({"train.py": tiny_train_py(train.read_text())},
                             "tiny config for the bench", parent=ws.head())
            max_steps = 6
        else:
            data_dir, env, max_steps = prepare.prepare_dataset(), {}, None
            if args.no_seed:       # the dataset's files without the seed beside them
                unseeded = tmp / "data"
                unseeded.mkdir()
                for path in data_dir.iterdir():
                    if path.is_file():
                        os.link(path, unseeded / path.name)
                data_dir = unseeded
            else:                  # what `make prepare` leaves: the data and the seed
                write_seed(data_dir, "cpu")
        settings = SessionSettings(
            mode="auto", max_experiments=1, device="cpu", data_dir=data_dir, extra_env=env,
            max_steps=max_steps, drafts_ahead=config.drafts_ahead,
            budget_s=(args.budget if args.budget is not None
                      else config.training_budget("cpu")),
            noise_repeats=(args.noise_repeats if args.noise_repeats is not None
                           else 0 if args.quick else config.noise_repeats))
        session = Session(ws, TunerAgent(device="cpu"), settings, monitor=False)
        judged = threading.Event()
        stopped = threading.Event()
        runs: dict[str, RunTimes] = {}
        started_at = time.monotonic()
        first: dict = {}

        def on_event(event):
            now = time.monotonic() - started_at
            if isinstance(event, RunStarted):
                label = "experiment" if event.proposal_id is not None else event.description
                runs[event.run_id] = RunTimes(label, now)
            elif isinstance(event, LogLines) and event.run_id in runs:
                run = runs[event.run_id]
                run.first_line = run.first_line if run.first_line is not None else now
            elif isinstance(event, RunProgress) and event.run_id in runs:
                run = runs[event.run_id]
                run.first_step = run.first_step if run.first_step is not None else now
                if event.percent > 0 and run.timed_from is None:
                    run.timed_from = now
                run.last_step = now
            elif isinstance(event, RunFinished):
                run = runs.get(event.result.run_id)
                if run is not None:
                    run.end, run.status = now, event.result.status.value
                    run.training_s, run.total_s = (event.result.training_seconds,
                                                   event.result.total_seconds)
                if event.experiment.proposal_id is not None and not judged.is_set():
                    first.update(seconds=now, status=event.result.status.value,
                                 description=event.experiment.description)
                    judged.set()
            elif isinstance(event, SessionStopped):
                stopped.set()

        session.subscribe(on_event)
        started_at = time.monotonic()
        session.start()
        while not judged.is_set() and not stopped.is_set():
            judged.wait(0.5)
        session.stop()

    mode = "quick (tiny model, 6 steps)" if args.quick else "full"
    seeded = "" if args.quick or args.no_seed else " and compile seed"
    print(f"{mode}: budget {settings.budget_s:g}s, {settings.noise_repeats} noise repeats, "
          f"fresh workspace, prepared data{seeded}\n")
    print(f"{'run':<28}{'start s':>9}{'end s':>9}{'took s':>9}  status")
    for run in runs.values():
        took = f"{run.end - run.start:9.1f}" if run.end is not None else f"{'-':>9}"
        end_text = f"{run.end:9.1f}" if run.end is not None else f"{'-':>9}"
        print(f"{run.label[:27]:<28}{run.start:9.1f}{end_text}{took}  {run.status}")
    print("\nwhere each run's seconds went (engine events; '-' where a phase was not seen):")
    print(f"{'run':<28}" + "".join(f"{name:>10}" for name in PHASES))
    for run in runs.values():
        print(f"{run.label[:27]:<28}" + "".join(
            f"{value:10.1f}" if value is not None else f"{'-':>10}" for value in run.phases()))
    if not first:
        print("\nno experiment was judged: the session stopped first")
        return 1
    print(f"\nfirst judged experiment after {first['seconds']:.1f}s "
          f"({first['seconds'] / 60:.1f} min): {first['description']} -> {first['status']}")
    if not args.quick:
        print(f"target: within {TARGET_S}s ({TARGET_S // 60} min); "
              f"{first['seconds'] / TARGET_S:.2f}x the target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
