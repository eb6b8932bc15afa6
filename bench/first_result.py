"""How long does a new user wait for the first judged experiment?

A fresh workspace (engine.workspace.init, the shipped templates), the offline tuner in auto
mode, the workspace's default settings (budget, noise repeats) as `make run` uses them, and
data from the prepared cache (prepared before the clock starts). The clock runs from
Session.start() to the RunFinished of the first experiment (a run with a proposal), through
the public Session API and its events; every run on the way is listed.

    python bench/first_result.py [--quick] [--budget S] [--noise-repeats N]

--quick: the tests' tiny model for 6 steps on a small dataset, no noise repeats unless
asked: seconds, for the test suite.
Target (full mode, 2-core CPU): first judged result within 6 minutes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.agents.tuner import TunerAgent                          # noqa: E402
from engine.events import RunFinished, RunStarted, SessionStopped   # noqa: E402
from engine.session import Session, SessionSettings                  # noqa: E402
from engine.workspace import init                                    # noqa: E402
from nanochat import prepare                                         # noqa: E402

TARGET_S = 6 * 60


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
        runs: list[tuple[str, float, float | None, str]] = []   # label, start, end, status
        started_at = time.monotonic()
        first: dict = {}

        def on_event(event):
            now = time.monotonic() - started_at
            if isinstance(event, RunStarted):
                label = "experiment" if event.proposal_id is not None else event.description
                runs.append([label, now, None, ""])
            elif isinstance(event, RunFinished):
                if runs:
                    runs[-1][2], runs[-1][3] = now, event.result.status.value
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
    print(f"{mode}: budget {settings.budget_s:g}s, {settings.noise_repeats} noise repeats, "
          "fresh workspace, prepared data\n")
    print(f"{'run':<28}{'start s':>9}{'end s':>9}{'took s':>9}  status")
    for label, start, end, status in runs:
        took = f"{end - start:9.1f}" if end is not None else f"{'-':>9}"
        end_text = f"{end:9.1f}" if end is not None else f"{'-':>9}"
        print(f"{label[:27]:<28}{start:9.1f}{end_text}{took}  {status}")
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
