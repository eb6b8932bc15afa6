"""Does the offline tuner find wins that hold, and does it beat random search?

Both searches get the same budget, the same experiments and the same shared baseline on the
default CPU config (the shipped train.py and the default dataset): each experiment trains
through the real Runner and is judged by the keep rule (engine/loop/keep_rule.py), confirmations
included; the best of each search is re-run once at the end to check that its win holds.
Random search changes one of the same constants (the tuner's knobs) to a value drawn within
three of the knob's steps of the current one (its whole range would spend the budget on
configurations that never finish), skipping what train.py's own checks reject, like the
tuner.

Reported: the best confirmed improvement of each against the baseline's mean, in units of
the pooled noise sigma.

    python bench/research_quality.py [--quick] [--budget 60] [--experiments 10] [--seed 0]

Full mode (60 s budget, 10 experiments each) takes about 45 minutes on 2 cores.
--quick: the tests' tiny model on a small dataset for a 1 s budget, 1 experiment each.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import random
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.agents import template_checks                                     # noqa: E402
from engine.agents.base import DraftContext, HistoryItem                       # noqa: E402
from engine.agents.knobs import knob_for                                    # noqa: E402
from engine.agents.trials import describe                                 # noqa: E402
from engine.agents.tuner import TunerAgent                                # noqa: E402
from engine.base.constants import parse_constants, rewrite                # noqa: E402
from engine.loop.keep_rule import Action, KeepRuleSettings, judge, pooled_noise     # noqa: E402
from engine.base.records import Draft, RunStatus                                    # noqa: E402
from engine.run.runner import Runner                                               # noqa: E402
from nanochat import prepare                                                   # noqa: E402

HARNESS_SOURCE = (ROOT / "nanochat" / "harness.py").read_text()
TEMPLATE = (ROOT / "nanochat" / "train.py").read_text()
# Bounded confirmations, so both searches fit in the time: a candidate runs at most 3 times
# and the baseline's 3 runs are enough for the best.
RULE = KeepRuleSettings(max_candidate_runs=3, min_best_runs=3)


REACH = 3    # random search draws within this many of a knob's steps of the current value


class RandomSearch:
    """One constant to a random value near the current one: a baseline for the tuner."""

    name = "random"

    def __init__(self, seed: int, device: str = "cpu"):
        self.rng = random.Random(seed)
        self.device = device
        self.tried: set[tuple] = set()

    def draft(self, ctx: DraftContext, emit, cancel) -> Draft:
        source = ctx.files["train.py"]
        constants = parse_constants(source, self.device)
        knobs = {n: k for n, c in constants.items() if (k := knob_for(n)) is not None}
        imported = template_checks.harness_settings(ctx.harness_source, self.device,
                                                    os.environ)
        for _ in range(1000):
            name = self.rng.choice(sorted(knobs))
            value = self._draw(knobs[name], constants[name].value)
            key = (name, value, source)
            if value is None or value == constants[name].value or key in self.tried:
                continue
            new = rewrite(source, constants, {name: value})
            if template_checks.violations(new, imported):
                continue
            self.tried.add(key)
            description = describe({name: (constants[name].value, value)}, constants)
            return Draft(description=description, hypothesis="random draw", files={"train.py": new})
        raise RuntimeError("random search found no new admissible value")

    def _draw(self, knob, current):
        if knob.scale == "ladder":
            options = knob.options(current)
            at = options.index(current)
            return self.rng.choice(options[max(0, at - REACH):at + REACH + 1])
        if knob.scale == "int":
            return self.rng.randint(max(int(knob.low), current - REACH),
                                    min(int(knob.high), current + REACH))
        if knob.scale == "log":
            spread = REACH * math.log(knob.step)
            low = max(math.log(knob.low), math.log(current) - spread) if current > 0 \
                else math.log(knob.low)
            high = min(math.log(knob.high), math.log(current) + spread) if current > 0 \
                else math.log(knob.high)
            return float(f"{math.exp(self.rng.uniform(low, high)):.2g}")
        grid = knob.step / 2
        low = max(knob.low, current - REACH * knob.step)
        high = min(knob.high, current + REACH * knob.step)
        return round(round(self.rng.uniform(low, high) / grid) * grid, 4)


@dataclass
class Trainer:
    """Trains a train.py text through the real Runner, one directory per configuration."""

    root: Path
    template: str            # the baseline train.py
    budget_s: float
    data_dir: Path
    env: dict
    count: int = 0
    dirs: dict = field(default_factory=dict)

    def run(self, source: str) -> float | None:
        directory = self.dirs.get(source)
        if directory is None:
            directory = self.root / f"config-{len(self.dirs):03d}"
            directory.mkdir(parents=True)
            (directory / "train.py").write_text(source)
            self.dirs[source] = directory
        self.count += 1
        env = {**self.env, "PYTHONPATH": str(ROOT)}
        runner = Runner(directory, f"run-{self.count:04d}", self.budget_s, device="cpu",
                        data_dir=self.data_dir, env=env)
        result = runner.run()
        if result.status is not RunStatus.KEEP:
            print(f"    run {self.count}: {result.status.value}: {result.message}", flush=True)
            return None
        print(f"    run {self.count}: val_bpb {result.val_bpb:.6f}", flush=True)
        return result.val_bpb


@dataclass
class Outcome:
    name: str
    keeps: int = 0
    runs: int = 0
    best_runs: list = field(default_factory=list)
    best_description: str = "baseline"
    groups: list = field(default_factory=list)


def search(name: str, agent, trainer: Trainer, baseline: list[float], experiments: int
           ) -> Outcome:
    source, best_runs = trainer.template, baseline
    outcome = Outcome(name)
    history = [HistoryItem("baseline", status="keep", val_bpb=sum(baseline) / len(baseline))]
    before = trainer.count
    def groups(*current):
        """Every group of repeats once: the baseline's, finished ones, the best's, the candidate's."""
        best = [best_runs] if best_runs is not baseline else []
        return [baseline, *outcome.groups, *best, *current]

    for number in range(1, experiments + 1):
        noise = pooled_noise(groups())
        ctx = DraftContext(workspace=trainer.root, targets=["train.py"],
                           files={"train.py": source}, base_commit="", program="",
                           harness_source=HARNESS_SOURCE, history=list(history),
                           best_val_bpb=sum(best_runs) / len(best_runs),
                           noise_floor=noise.sigma)
        draft = agent.draft(ctx, lambda kind, text: None, threading.Event())
        candidate = draft.files["train.py"]
        print(f"  {name} {number}: {draft.description}", flush=True)
        first = trainer.run(candidate)
        diff = "".join(difflib.unified_diff(source.splitlines(True), candidate.splitlines(True),
                                            "a/train.py", "b/train.py"))
        if first is None:
            history.append(HistoryItem(draft.description, draft.hypothesis, "crash", diff=diff))
            continue
        runs = [first]
        while True:
            decision = judge(best_runs, runs, pooled_noise(groups(runs)), RULE)
            if decision.action is not Action.CONFIRM:
                break
            target = best_runs if decision.rerun == "best" else runs
            value = trainer.run(source if decision.rerun == "best" else candidate)
            if value is None:
                break
            target.append(value)
        print(f"    -> {decision.action.value}: {decision.reason}", flush=True)
        kept = decision.action is Action.KEEP
        mean = sum(runs) / len(runs)
        history.append(HistoryItem(draft.description, draft.hypothesis,
                                   "keep" if kept else "discard", mean,
                                   mean - sum(best_runs) / len(best_runs), diff=diff))
        if kept:
            if best_runs is not baseline:
                outcome.groups.append(best_runs)
            source, best_runs = candidate, runs
            outcome.keeps += 1
            outcome.best_description = draft.description
        else:
            outcome.groups.append(runs)
    if outcome.keeps:
        again = trainer.run(source)          # does the final best hold on one more run?
        if again is not None:
            best_runs.append(again)
    outcome.best_runs = best_runs
    outcome.runs = trainer.count - before
    return outcome


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, seconds-long runs")
    parser.add_argument("--budget", type=float, default=60.0, help="training seconds per run")
    parser.add_argument("--experiments", type=int, default=10, help="experiments per search")
    parser.add_argument("--baseline-runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.quick:
            from tests.conftest import TINY_ENV, tiny_train_py
            args.budget, args.experiments, args.baseline_runs = 1.0, 1, 2
            data = prepare.prepare_dataset("default", cache_dir=prepare.resolve_cache_dir(),
                                           vocab_size=512, max_bytes=1_000_000,
                                           out_dir=tmp / "data")
            trainer = Trainer(tmp / "configs", tiny_train_py(TEMPLATE), args.budget, data,
                              dict(TINY_ENV))
        else:
            trainer = Trainer(tmp / "configs", TEMPLATE, args.budget, prepare.prepare_dataset(),
                              {})
        print(f"baseline: {args.baseline_runs} runs of {args.budget:g}s", flush=True)
        baseline = [v for v in (trainer.run(trainer.template) for _ in range(args.baseline_runs))
                    if v is not None]
        if len(baseline) < 2:
            print("the baseline did not train twice: no noise estimate")
            return 1
        outcomes = [search("tuner", TunerAgent(device="cpu", seed=args.seed), trainer, baseline,
                           args.experiments),
                    search("random", RandomSearch(args.seed), trainer, baseline,
                           args.experiments)]

    base_mean = sum(baseline) / len(baseline)
    noise = pooled_noise([baseline] + [g for o in outcomes
                                       for g in o.groups + ([o.best_runs] if o.keeps else [])])
    sigma = noise.sigma
    print(f"\n{args.experiments} experiments each, {args.budget:g}s budget; baseline mean "
          f"{base_mean:.6f} over {len(baseline)} runs; pooled sigma "
          f"{sigma:.6f} ({noise.dof} dof)\n")
    print(f"{'search':<8}{'keeps':>6}{'runs':>6}{'best mean':>12}{'n':>4}{'gain':>11}"
          f"{'gain/sigma':>12}  best change")
    for o in outcomes:
        mean = sum(o.best_runs) / len(o.best_runs)
        gain = base_mean - mean
        in_sigma = f"{gain / sigma:>12.2f}" if sigma else f"{'n/a':>12}"
        print(f"{o.name:<8}{o.keeps:>6}{o.runs:>6}{mean:>12.6f}{len(o.best_runs):>4}"
              f"{gain:>11.6f}{in_sigma}  {o.best_description}")
    print("\ngain: baseline mean - the final best's mean (its runs include one more after the "
          "search); target: at least one keep that holds, the tuner ahead of random search")
    return 0


if __name__ == "__main__":
    sys.exit(main())
