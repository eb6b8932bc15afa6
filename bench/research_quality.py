"""Does the offline tuner find wins that hold, and does it beat random search?

Both searches get the same budget, the same experiments and the same shared baseline on the
default CPU config (the shipped train.py and the default dataset): each experiment trains
through the real Runner and is judged by the keep rule (engine/loop/keep_rule.py, `--rule`) as the
engine runs it: confirmations, re-runs of the best every `best_rerun_every` candidate runs,
and each re-run of the best rechecking its keep (the sequential rule reverts a keep its
re-runs show was noise); the best of each search is re-run once at the end to check that its
win holds.
Random search changes one of the same constants (the tuner's knobs) to a value drawn within
three of the knob's steps of the current one (its whole range would spend the budget on
configurations that never finish), skipping what train.py's own checks reject, like the
tuner.

Reported: the best confirmed improvement of each against the baseline's mean, in units of
the pooled noise sigma.

    python bench/research_quality.py [--quick] [--budget 60] [--experiments 10] [--seed 0]
                                     [--rule margin|sequential]

Full mode (60 s budget, 10 experiments each) takes about 45 minutes on 2 cores.
--quick: the tests' tiny model on a small dataset for a 1 s budget, 1 experiment each, at
most 2 runs of a candidate.
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

from engine.agents import template_checks  # noqa: E402
from engine.agents.base import DraftContext, HistoryItem  # noqa: E402
from engine.agents.knobs import knob_for  # noqa: E402
from engine.agents.trials import describe  # noqa: E402
from engine.agents.tuner import TunerAgent  # noqa: E402
from engine.base.constants import parse_constants, rewrite  # noqa: E402
from engine.base.records import Draft, RunStatus  # noqa: E402
from engine.loop.keep_rule import (RULES, Action, KeepRuleSettings, judge,  # noqa: E402
                                   recheck, settings_for, should_rerun_best)
from engine.loop.keep_stats import pooled_noise  # noqa: E402
from engine.run.runner import Runner  # noqa: E402
from nanochat import prepare  # noqa: E402

HARNESS_SOURCE = (ROOT / "nanochat" / "harness.py").read_text()
TEMPLATE = (ROOT / "nanochat" / "train.py").read_text()
# Bounded confirmations, so both searches fit in the time: a candidate runs at most 3 times
# and the baseline's 3 runs are enough for the best.
SHORT_LIMITS = dict(max_candidate_runs=3, min_best_runs=3)
# --quick checks that the script runs, every path of the loop included: a candidate runs at
# most twice; the best still gets its confirmation re-run.
QUICK_LIMITS = dict(max_candidate_runs=2, min_best_runs=3)


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
        if result.status is not RunStatus.MEASURED:
            print(f"    run {self.count}: {result.status.value}: {result.message}", flush=True)
            return None
        print(f"    run {self.count}: val_bpb {result.val_bpb:.6f}", flush=True)
        return result.val_bpb


@dataclass
class Outcome:
    name: str
    keeps: int = 0               # keeps that stand at the end
    reverted: int = 0            # keeps the best's re-runs showed were noise
    runs: int = 0
    best_runs: list = field(default_factory=list)
    best_description: str = "baseline"
    groups: list = field(default_factory=list)


@dataclass
class Kept:
    source: str
    runs: list
    description: str
    told: HistoryItem | None = None    # its line in the agent's history (None: the baseline)


def search(name: str, agent, trainer: Trainer, baseline: list[float], experiments: int,
           rule: KeepRuleSettings) -> Outcome:
    """The loop as the engine runs it: each experiment judged until the rule decides, the
    best re-run every `best_rerun_every` candidate runs, each re-run of the best rechecking
    its keep (a revert gives the best back to its predecessor)."""
    chain = [Kept(trainer.template, baseline, "baseline")]
    outcome = Outcome(name)
    history = [HistoryItem("baseline", status="keep", val_bpb=sum(baseline) / len(baseline))]
    before = trainer.count
    since_best_ran = 0

    def groups(*current):
        """Every group of repeats once: the chain's, finished ones, the candidate's."""
        return [k.runs for k in chain] + outcome.groups + list(current)

    def run_best() -> bool:
        """The best once more, then the recheck; True if the run produced a metric."""
        best = chain[-1]
        value = trainer.run(best.source)
        if value is None:
            return False
        best.runs.append(value)
        if len(chain) > 1:
            decision = recheck(chain[-2].runs, best.runs, pooled_noise(groups()), rule)
            if decision is not None and decision.action is Action.DISCARD:
                print(f"    -> {best.description}: {decision.reason}", flush=True)
                outcome.groups.append(chain.pop().runs)
                outcome.keeps -= 1
                outcome.reverted += 1
                best.told.status = "reverted"     # as the journal tells the agent
        return True

    for number in range(1, experiments + 1):
        if should_rerun_best(since_best_ran, rule):
            print(f"  {name}: the best again, to follow drift", flush=True)
            run_best()
            since_best_ran = 0
        best = chain[-1]
        noise = pooled_noise(groups())
        ctx = DraftContext(workspace=trainer.root, targets=["train.py"],
                           files={"train.py": best.source}, base_commit="", program="",
                           harness_source=HARNESS_SOURCE, history=list(history),
                           best_val_bpb=sum(best.runs) / len(best.runs),
                           noise_floor=noise.sigma)
        draft = agent.draft(ctx, lambda kind, text: None, threading.Event())
        candidate = draft.files["train.py"]
        print(f"  {name} {number}: {draft.description}", flush=True)
        first = trainer.run(candidate)
        since_best_ran += 1
        diff = "".join(difflib.unified_diff(best.source.splitlines(True),
                                            candidate.splitlines(True), "a/train.py",
                                            "b/train.py"))
        if first is None:
            history.append(HistoryItem(draft.description, draft.hypothesis, "crash", diff=diff))
            continue
        runs = [first]
        while True:
            decision = judge(chain[-1].runs, runs, pooled_noise(groups(runs)), rule)
            if decision.action is not Action.CONFIRM:
                break
            if decision.rerun == "best":
                if not run_best() or chain[-1] is not best:
                    break            # a revert: the candidate stood on a best that is gone
            else:
                value = trainer.run(candidate)
                if value is None:
                    break
                runs.append(value)
                since_best_ran += 1
        kept = decision.action is Action.KEEP and chain[-1] is best
        print(f"    -> {'keep' if kept else 'discard'}: {decision.reason}", flush=True)
        mean = sum(runs) / len(runs)
        history.append(HistoryItem(draft.description, draft.hypothesis,
                                   "keep" if kept else "discard", mean,
                                   mean - sum(best.runs) / len(best.runs), diff=diff))
        if kept:
            chain.append(Kept(candidate, runs, draft.description, history[-1]))
            outcome.keeps += 1
            since_best_ran = 0
        else:
            outcome.groups.append(runs)
    if outcome.keeps:
        run_best()                   # does the final best hold on one more run?
    outcome.best_runs = chain[-1].runs
    outcome.best_description = chain[-1].description
    outcome.groups += [k.runs for k in chain[1:]]
    outcome.runs = trainer.count - before
    return outcome


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, seconds-long runs")
    parser.add_argument("--budget", type=float, default=60.0, help="training seconds per run")
    parser.add_argument("--experiments", type=int, default=10, help="experiments per search")
    parser.add_argument("--baseline-runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rule", choices=RULES, default=KeepRuleSettings.rule,
                        help="the keep rule (engine/loop/keep_rule.py); default: the engine's")
    args = parser.parse_args()
    rule = settings_for(args.rule, **(QUICK_LIMITS if args.quick else SHORT_LIMITS))

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
        # one baseline for both: its re-runs during either search sharpen its mean
        outcomes = [search("tuner", TunerAgent(device="cpu", seed=args.seed), trainer,
                           baseline, args.experiments, rule),
                    search("random", RandomSearch(args.seed), trainer, baseline,
                           args.experiments, rule)]

    base_mean = sum(baseline) / len(baseline)
    noise = pooled_noise([baseline] + [g for o in outcomes for g in o.groups])
    sigma = noise.sigma
    print(f"\n{args.experiments} experiments each, {args.budget:g}s budget; baseline mean "
          f"{base_mean:.6f} over {len(baseline)} runs; pooled sigma "
          f"{sigma:.6f} ({noise.dof} dof)\n")
    print(f"keep rule: {rule.rule}\n")
    print(f"{'search':<8}{'keeps':>6}{'reverted':>9}{'runs':>6}{'best mean':>12}{'n':>4}"
          f"{'gain':>11}{'gain/sigma':>12}  best change")
    for o in outcomes:
        mean = sum(o.best_runs) / len(o.best_runs)
        gain = base_mean - mean
        in_sigma = f"{gain / sigma:>12.2f}" if sigma else f"{'n/a':>12}"
        print(f"{o.name:<8}{o.keeps:>6}{o.reverted:>9}{o.runs:>6}{mean:>12.6f}"
              f"{len(o.best_runs):>4}{gain:>11.6f}{in_sigma}  {o.best_description}")
    print("\nkeeps: kept and never reverted; gain: the baseline's mean (its re-runs "
          "included) - the final best's mean (its runs include one more after the search); "
          "target: at least one keep that holds, the tuner ahead of random search")
    return 0


if __name__ == "__main__":
    sys.exit(main())
