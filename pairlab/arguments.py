"""The command line's flags and commands, in the order a user meets them."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path


def _workspace_flag(parser: argparse.ArgumentParser, subcommand: bool = True) -> None:
    parser.add_argument("--workspace", type=Path, default=_default(None, subcommand),
                        help="research workspace (default: $PAIRLAB_WORKSPACE or "
                             "~/pairlab-workspace, created on first use)")


def _default(value, subcommand: bool):
    """A subcommand's flag sets nothing unless given, so `pairlab --workspace W stop` keeps
    W: a default of its own would overwrite what the flag before the command said."""
    return argparse.SUPPRESS if subcommand else value


def _loop_flags(parser: argparse.ArgumentParser, subcommand: bool = True) -> None:
    _workspace_flag(parser, subcommand)
    unset = _default(None, subcommand)
    parser.add_argument("--agent", choices=("auto", "claude", "tuner"),
                        default=_default("auto", subcommand),
                        help="auto: Claude when ANTHROPIC_API_KEY is set, else the offline tuner")
    parser.add_argument("--mode", choices=("review", "auto"), default=unset,
                        help="review: every patch waits for you; auto: none do")
    parser.add_argument("--budget", type=float, default=unset, metavar="SECONDS",
                        help="training seconds per experiment (default 300)")
    parser.add_argument("--max-experiments", type=int, default=unset, metavar="N")
    parser.add_argument("--max-cost", type=float, default=unset, metavar="USD")
    parser.add_argument("--max-hours", type=float, default=unset, metavar="H")
    parser.add_argument("--drafts-ahead", type=int, default=unset, metavar="N",
                        help="proposals kept ready ahead of the trainer (default 1)")
    parser.add_argument("--noise-repeats", type=int, default=unset, metavar="N",
                        help="extra baseline runs that measure the noise floor (default 2)")
    parser.add_argument("--device", choices=("cpu", "cuda", "mps"), default=unset)
    parser.add_argument("--slots", type=int, default=unset, metavar="K",
                        help="runs trained at once, each on its own GPU and git worktree "
                             "(default: one per visible GPU; 1 on a CPU or MPS machine)")
    parser.add_argument("--no-speculate", dest="speculate", action="store_false",
                        default=unset, help="review mode: do not train the top "
                                            "proposal before you accept it")
    parser.add_argument("--model", default=unset, help="Claude model id")
    parser.add_argument("--executor", choices=("local", "ray"), default=unset,
                        help="local: runs train on this machine (default); ray: each run is "
                             "a task on an existing Ray cluster (pip install 'pairlab[ray]')")
    parser.add_argument("--ray-address", default=unset, metavar="ADDRESS",
                        help="the Ray cluster, e.g. 10.0.0.5:6379 (default: the cluster this "
                             "machine belongs to)")
    parser.add_argument("--ray-resources", default=unset, metavar="NAME=AMOUNT,...",
                        help="what each run asks of the cluster: num_cpus, num_gpus, memory "
                             "(bytes) or a custom resource (default num_gpus=1; on CPU "
                             "workers: num_cpus=1,num_gpus=0)")
    parser.add_argument("--ray-data-dir", default=unset, metavar="PATH",
                        help="the prepared data at a path every Ray node reads (a shared file "
                             "system); default: shipped through Ray's object store")


# The loop flags as (option, attribute): what `pairlab` hands to the engine it starts.
LOOP_OPTIONS = (("--agent", "agent"), ("--mode", "mode"), ("--budget", "budget"),
                ("--max-experiments", "max_experiments"), ("--max-cost", "max_cost"),
                ("--max-hours", "max_hours"), ("--drafts-ahead", "drafts_ahead"),
                ("--noise-repeats", "noise_repeats"), ("--device", "device"),
                ("--slots", "slots"), ("--model", "model"), ("--executor", "executor"),
                ("--ray-address", "ray_address"), ("--ray-resources", "ray_resources"),
                ("--ray-data-dir", "ray_data_dir"))


HELP_WIDTH = 78
# The commands in the order a user meets them: (name, what it does in one line, an example).
COMMANDS = (
    ("doctor", "check this machine and workspace in seconds: data, device and precision, "
               "confinement, torch.compile, a tiny run through the evaluator",
     "pairlab doctor --workspace ~/lab"),
    ("init", "create a research workspace, or adopt an autoresearch-style repo as it is",
     'pairlab init ~/lab --tag may1   |   pairlab init ~/autoresearch --adopt '
     '--run "uv run train.py" --metric summary_line'),
    ("prepare", "prepare the training data and the tokenizer (once per machine)",
     "pairlab prepare --text notes/*.txt"),
    ("attach", "open another app on the workspace's running engine",
     "pairlab attach --read-only"),
    ("status", "print the running engine's state in plain text, with the error that paused it",
     "pairlab status --workspace ~/lab"),
    ("stop", "stop the workspace's engine (the run in flight is killed; nothing is lost)",
     "pairlab stop"),
    ("headless", "run the engine in the foreground without the app (apps can attach to it); "
                 "exits 1 when the loop cannot go on",
     "pairlab headless --mode auto --max-experiments 10 --jsonl"),
    ("web", "serve the app to a browser on 127.0.0.1 only (reach it over SSH with "
            "`ssh -L 8000:127.0.0.1:8000 HOST`)",
     "pairlab web --port 8000"),
    ("report", "write progress.png and a Markdown summary of the session",
     "pairlab report --out ~/lab-report"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pairlab", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "A terminal copilot for autonomous LLM-training research. With no command, "
            "attaches the app to the workspace's engine, starting the engine (detached: it "
            "outlives the app and the terminal) if none runs.", HELP_WIDTH),
        epilog="example:\n  pairlab --agent tuner --mode review --budget 120")
    _loop_flags(parser, subcommand=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parsers = {name: sub.add_parser(name, help=summary,
                                    description=textwrap.fill(summary, HELP_WIDTH),
                                    epilog=f"example:\n  {example}",
                                    formatter_class=argparse.RawDescriptionHelpFormatter,
                                    add_help=name != "prepare")
               for name, summary, example in COMMANDS}

    _workspace_flag(parsers["doctor"])
    parsers["doctor"].add_argument("--device", choices=("cpu", "cuda", "mps"),
                                   default=argparse.SUPPRESS,
                                   help="the device runs use (default: the workspace's)")

    init = parsers["init"]
    init.add_argument("dir", type=Path)
    init.add_argument("--tag", default=None, help="branch autoresearch/<tag> (default: date)")
    init.add_argument("--adopt", action="store_true",
                      help="adopt an existing autoresearch-style git repo as it is")
    init.add_argument("--target", action="append", dest="targets", default=None,
                      help="file the agent may change (repeatable; default train.py)")
    init.add_argument("--run", dest="run_command", default=None,
                      help='run command, e.g. "uv run train.py" (default: python train.py)')
    init.add_argument("--metric", choices=("result_file", "summary_line"), default=None,
                      help="where val_bpb comes from: the harness's result file (default) or "
                           "the `val_bpb:` summary line of an unmodified autoresearch repo")

    _workspace_flag(parsers["attach"])
    parsers["attach"].add_argument("--read-only", action="store_true",
                                   help="watch without deciding: no accept, edit, veto or "
                                        "controls")
    for name in ("status", "stop"):
        _workspace_flag(parsers[name])

    _loop_flags(parsers["headless"])
    parsers["headless"].add_argument("--jsonl", action="store_true",
                                     help="print events as JSON lines")

    web = parsers["web"]
    _loop_flags(web)
    web.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (default 8000)")
    web.add_argument("--host", default="127.0.0.1",
                     help="only 127.0.0.1 is served: the browser view has no login")

    _workspace_flag(parsers["report"])
    parsers["report"].add_argument("--out", type=Path, default=None,
                                   help="output directory (default: the workspace)")
    return parser
