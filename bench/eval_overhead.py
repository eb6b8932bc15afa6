"""
Cost of scoring the model out of process against the old in-process evaluation.

The model is train.py's own GPT at the default CPU config, after one training step (the
weights do not change what evaluation costs). In process, as the harness used to: the
evaluation rows through the live model. Out of process, as pairlab does now: the hand-off's
torch.export and save, then the evaluator (`python -m nanochat.evaluate`: load, causality
check, evaluation) started the way the runner starts it: a fresh interpreter (torch imported
for it), the evaluator server's first evaluation (its start included) and a fork of the
running server, which is what a run pays (the server starts while the first run trains).
The overhead is the last one's.

    python bench/eval_overhead.py [--quick]

Prints the seconds of each part and the overhead as a share of a 300 s run's wall time
(target: under 10%). --quick: rows of 64 tokens and 4096 evaluated tokens (seconds).
"""

import argparse
import json
import os
import runpy
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from engine.run.evaluation import evaluator_env, run_evaluator  # noqa: E402
from nanochat import evaluate, harness  # noqa: E402

RUN_SECONDS = 300.0
TARGET_SHARE = 0.10


def trained_model():
    """The template's GPT after one step, caught at the hand-off."""
    caught = {}

    def catch(model, *, autocast, batch_size, **_):
        caught.update(model=model, autocast=autocast, batch_size=batch_size)
        raise SystemExit(0)

    harness.handoff, harness.MAX_STEPS, harness.COMPILE = catch, 1, False
    try:
        runpy.run_path(str(REPO / "nanochat" / "train.py"), run_name="__main__")
    except SystemExit:
        pass
    return caught["model"], caught["autocast"], caught["batch_size"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds")
    args = parser.parse_args()
    if not (harness.data_dir() / "meta.json").is_file():
        sys.exit(f"no prepared data at {harness.data_dir()}: run `pairlab prepare`")
    seq_len = 64 if args.quick else harness.MAX_SEQ_LEN
    eval_tokens = 4096 if args.quick else evaluate.EVAL_TOKENS
    harness.MAX_SEQ_LEN = evaluate.MAX_SEQ_LEN = seq_len
    directory = harness.data_dir()
    model, autocast, batch_size = trained_model()

    def live(idx):
        with autocast:
            return model(idx)

    started = time.perf_counter()
    reference = evaluate.evaluate(live, batch_size, directory, seq_len, eval_tokens)
    in_process = time.perf_counter() - started

    with tempfile.TemporaryDirectory(prefix="eval-overhead-") as scratch:
        started = time.perf_counter()
        program = harness.export_model(model, autocast=autocast, batch_size=batch_size,
                                       seq_len=seq_len)
        harness.save_model(program, Path(scratch) / "model")
        export = time.perf_counter() - started
        env = evaluator_env({**os.environ, "PAIRLAB_DEVICE": harness.DEVICE,
                             "PAIRLAB_SEQ_LEN": str(seq_len),
                             "PAIRLAB_EVAL_TOKENS": str(eval_tokens)}, directory)
        runs = {}
        for name, mode in (("fresh", "process"), ("server start", "server"),
                           ("server warm", "server")):
            os.environ["PAIRLAB_EVALUATOR"] = mode
            runs[name] = run = run_evaluator(Path(scratch) / "model", env)
            if run.returncode != 0:
                sys.exit(f"the evaluator ({name}) failed:\n" + "\n".join(run.lines[-20:]))
    run = runs["server warm"]          # what a run pays: the server is up by its hand-off
    result = json.loads(run.result)
    overhead = export + run.seconds - in_process
    share = overhead / RUN_SECONDS
    print(f"config: {'quick' if args.quick else 'default CPU'} | device {harness.DEVICE} | "
          f"seq {seq_len} | {reference.tokens:,} tokens scored | batch {batch_size} | "
          f"torch {torch.__version__}")
    print(f"in-process evaluation (the old way):        {in_process:7.2f} s")
    print(f"hand-off export + save:                    {export:7.2f} s")
    print(f"evaluator, a fresh interpreter (start, torch import, load, check, eval): "
          f"{runs['fresh'].seconds:7.2f} s")
    print(f"evaluator, the server's first (its start and imports included):          "
          f"{runs['server start'].seconds:7.2f} s")
    print(f"evaluator, a fork of the running server (load, check, eval):             "
          f"{run.seconds:7.2f} s (of which scoring {result['eval_seconds']:.2f} s)")
    print(f"overhead: {overhead:+.2f} s = {100 * share:.2f}% of a {RUN_SECONDS:g} s run "
          f"(target < {100 * TARGET_SHARE:g}%: {'met' if share < TARGET_SHARE else 'NOT met'})")
    print(f"val_bpb in process {reference.val_bpb:.6f}, out of process {result['val_bpb']:.6f} "
          f"(difference {abs(reference.val_bpb - result['val_bpb']):.2e})")


if __name__ == "__main__":
    main()
