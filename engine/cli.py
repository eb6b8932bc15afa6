"""`pairlab` command line: the app on the workspace's engine (default), attach, web, status,
stop, headless, init, prepare, report.

The engine is its own process: `pairlab` attaches to the workspace's engine if one runs, or
starts one detached (`pairlab headless` in a new session, its output in .pairlab/engine.log)
and then attaches; quitting the app leaves it running.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from engine import api_key
from engine import events as ev
from engine.records import RunStatus

ENGINE_ARGS_NAME = "engine.json"      # how the running engine was started: a restart reuses it
ENGINE_START_TIMEOUT_S = 120.0        # a first start may import torch on a loaded machine


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


def main(argv: list[str] | None = None) -> int:
    """The `pairlab` command. Without argv it is this process's entry point (the console
    script, `python -m engine`): the API key goes out of its environment first."""
    if argv is None:
        api_key.take()
        argv = sys.argv[1:]
    if argv[:1] == ["prepare"]:
        from nanochat import prepare
        return prepare.main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        if args.command == "init":
            return _init(args)
        if args.command == "report":
            return _report(args)
        if args.command == "headless":
            return _headless(args)
        if args.command == "status":
            return _status(args)
        if args.command == "doctor":
            return _doctor(args)
        if args.command == "stop":
            return _stop(args)
        if args.command == "web":
            return _web(args)
        if args.command == "attach":
            return _run_app(existing_workspace(args.workspace), read_only=args.read_only)
        workspace = open_workspace(args.workspace)
        executor_settings(args, workspace.config)   # a mistake is said here, not in a log
        return _run_app(workspace, start_args=args)
    except UserError as exc:
        print(f"pairlab: {exc}", file=sys.stderr)
        return 2


class UserError(Exception):
    """A mistake in what the user asked for; printed without a traceback."""


# ---------------------------------------------------------------------- opening a session


def open_workspace(directory: Path | None):
    """The workspace at `directory` (default: the default one), created on first use."""
    from engine.workspace import WorkspaceError, open_or_init
    try:
        return open_or_init(directory)
    except WorkspaceError as exc:
        raise UserError(str(exc)) from exc


def existing_workspace(directory: Path | None):
    from engine.workspace import WorkspaceError, Workspace, default_workspace_dir
    try:
        return Workspace.open(directory or default_workspace_dir())
    except WorkspaceError as exc:
        raise UserError(str(exc)) from exc


def settings_from_args(args, config):
    """SessionSettings from the loop flags, the workspace's config filling the rest."""
    from engine.session import SessionSettings
    if args.slots is not None and args.slots < 1:
        raise UserError(f"--slots must be at least 1, not {args.slots}")
    return SessionSettings(
        mode=args.mode or config.mode,
        budget_s=(args.budget if args.budget is not None
                  else config.training_budget(args.device)),
        max_experiments=args.max_experiments, max_cost=args.max_cost,
        max_hours=args.max_hours,
        drafts_ahead=args.drafts_ahead if args.drafts_ahead is not None else config.drafts_ahead,
        noise_repeats=(args.noise_repeats if args.noise_repeats is not None
                       else config.noise_repeats),
        device=args.device or config.device,
        speculate=config.speculate if args.speculate is None else args.speculate,
        slots=args.slots if args.slots is not None else config.slots,
        keep_rule=config.keep_rule,
        **executor_settings(args, config))


def executor_settings(args, config) -> dict:
    """The executor flags (the workspace's config filling the rest) as SessionSettings
    fields; UserError for a mistake in them, or for the Ray executor without Ray."""
    executor = args.executor or config.executor
    values = {"--ray-address": args.ray_address or config.ray_address,
              "--ray-resources": args.ray_resources or config.ray_resources,
              "--ray-data-dir": args.ray_data_dir or config.ray_data_dir}
    if executor != "ray":
        given = [flag for flag in values if getattr(args, flag[2:].replace("-", "_"))]
        if given:
            verb = "goes" if len(given) == 1 else "go"
            raise UserError(f"{', '.join(given)} {verb} with --executor ray")
        return {}
    from engine import ray_executor
    try:
        ray_executor.import_ray()
        resources = (ray_executor.parse_resources(values["--ray-resources"])
                     if values["--ray-resources"] else None)
    except (ray_executor.RayUnavailable, ValueError) as exc:
        raise UserError(str(exc)) from exc
    data_dir = values["--ray-data-dir"]
    return {"executor": "ray", "ray_address": values["--ray-address"],
            "ray_resources": resources, "ray_data_dir": Path(data_dir) if data_dir else None}


def make_session(workspace, agent_name: str, settings, model: str | None = None,
                 monitor: bool = True):
    """The one way a Session is opened: the engine process and the tests both come here."""
    from engine.agents import make_agent
    from engine.session import Session
    agent = make_agent(agent_name, device=settings.device or "cpu", model=model)
    return Session(workspace, agent, settings, monitor=monitor)


# ---------------------------------------------------------------------- the engine process


def engine_argv(workspace, args=None) -> list[str]:
    """The command that runs this workspace's engine: `pairlab headless` with the flags.
    With -P: the folder the user is in is not on the engine's path (nor, so, the run's)."""
    argv = [sys.executable, "-P", "-m", "engine", "headless", "--workspace", str(workspace.root)]
    for option, attribute in LOOP_OPTIONS if args is not None else ():
        value = getattr(args, attribute, None)
        if value is not None and not (attribute == "agent" and value == "auto"):
            argv += [option, str(value)]
    if args is not None and getattr(args, "speculate", None) is False:
        argv.append("--no-speculate")
    return argv


def start_engine(workspace, argv: list[str]):
    """Start the engine detached (new session: it survives the app and the terminal), then
    attach to it. Its output goes to .pairlab/engine.log."""
    from engine.client import connect
    from engine.service import LOG_NAME, ServiceError, socket_path
    log_path = workspace.pairlab_dir / LOG_NAME
    with log_path.open("ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: "
                  f"{shlex.join(argv)}\n".encode())
        log.flush()
        with api_key.handed_over(dict(os.environ)) as (env, fds):
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True,
                                       env=env, pass_fds=fds)
    deadline = time.monotonic() + ENGINE_START_TIMEOUT_S
    while True:
        try:
            return connect(socket_path(workspace.pairlab_dir))
        except ServiceError as exc:
            if "no engine is running" not in str(exc):
                raise UserError(str(exc)) from exc
        code = process.poll()
        if code is not None:
            tail = log_path.read_text(errors="replace").splitlines()[-8:]
            raise UserError(f"the engine exited ({code}) before it served; the end of "
                            f"{log_path}:\n" + "\n".join(tail))
        if time.monotonic() > deadline:
            raise UserError(f"the engine did not start serving in {ENGINE_START_TIMEOUT_S:g} s;"
                            f" see {log_path}")
        time.sleep(0.1)


def attach(workspace, read_only: bool = False):
    """A client on the workspace's running engine; UserError if none runs."""
    from engine.client import connect
    from engine.service import ServiceError, socket_path
    try:
        return connect(socket_path(workspace.pairlab_dir), read_only=read_only)
    except ServiceError as exc:
        if "no engine is running" in str(exc):
            raise UserError(f"no engine is running for {workspace.root}; start one with "
                            f"`pairlab --workspace {workspace.root}`") from exc
        raise UserError(str(exc)) from exc


def attach_or_start(workspace, args=None):
    try:
        return attach(workspace)
    except UserError as exc:
        if "no engine is running" not in str(exc):
            raise
    return start_engine(workspace, engine_argv(workspace, args))


def restart_argv(workspace) -> list[str]:
    """How the engine that died was started, so the restart runs with the same flags."""
    saved = workspace.pairlab_dir / ENGINE_ARGS_NAME
    try:
        return [sys.executable, *json.loads(saved.read_text())["argv"][1:]]
    except (OSError, ValueError, KeyError, IndexError):
        return engine_argv(workspace)


def _run_app(workspace, start_args=None, read_only: bool = False) -> int:
    from tui.app import EXIT_RESTART, run_app
    client = attach(workspace, read_only) if read_only or start_args is None \
        else attach_or_start(workspace, start_args)
    while True:
        code = run_app(client)
        if code != EXIT_RESTART:
            return code
        client = start_engine(workspace, restart_argv(workspace))
        if read_only:
            client.close()
            client = attach(workspace, read_only=True)


def _web(args) -> int:
    """Serve the app to browsers; the engine is started detached first if none runs."""
    from tui import web
    try:
        web.check_host(args.host)
        workspace = open_workspace(args.workspace)
        attach_or_start(workspace, args).close()     # the engine runs on without this client
        web.serve(workspace.root, port=args.port, host=args.host)
    except web.WebRefused as exc:
        raise UserError(str(exc)) from exc
    return 0


def _doctor(args) -> int:
    """One line per check; exit 1 when one failed."""
    from engine import doctor
    from engine.workspace import Workspace, default_workspace_dir, is_workspace
    root = Path(args.workspace).expanduser() if args.workspace else default_workspace_dir()
    started = time.monotonic()
    workspace = Workspace.open(root) if is_workspace(root) else None
    if workspace is None:
        print(f"pairlab doctor: no workspace at {root} yet: checking the template a new one "
              "starts from")
        target = doctor.template_target(device=args.device)
    else:
        print(f"pairlab doctor: {workspace.root}")
        target = doctor.target_of(workspace, settings_from_args(
            build_parser().parse_args(["headless", "--workspace", str(root),
                                       *(["--device", args.device] if args.device else [])]),
            workspace.config))
    checks = doctor.run_checks(target, on_check=lambda check: print(check.line(), flush=True))
    failed = [check.name for check in checks if check.failed]
    took = f"{time.monotonic() - started:.1f}s"
    print(f"failed: {', '.join(failed)} ({took})" if failed else f"all checks passed ({took})")
    return 1 if failed else 0


def _status(args) -> int:
    workspace = existing_workspace(args.workspace)
    client = attach(workspace, read_only=True)
    try:
        print(status_text(client))
    finally:
        client.close()
    return 0


def status_text(client) -> str:
    """The engine's state in plain lines, for scripts and small screens."""
    snap = client.snapshot
    lines = [f"workspace: {snap.workspace}",
             f"state: {client.state}" + (f" ({snap.detail})" if snap.detail else ""),
             f"mode: {client.mode}"]
    if snap.error and (snap.paused or snap.stopped):
        lines.append(f"error: {snap.error}")
    best = client.best
    lines.append(f"best: {best[1]:.6f} at {best[0][:7]}" if best else "best: none yet")
    if client.noise_floor is not None:
        lines.append(f"noise floor: {client.noise_floor:.6f}")
    experiments = client.experiments()
    lines.append(f"experiments: {len(experiments)}")
    finished = [e for e in experiments if e.finished_at is not None]
    if finished and finished[-1].status in (RunStatus.CRASH, RunStatus.TIMEOUT) \
            and finished[-1].message:
        last = finished[-1]
        lines.append(f"last run: {last.run_id} {last.status.value}: {last.message}")
    pending = client.pending()
    lines.append(f"pending: {len(pending)}")
    lines += [f"  #{p.id} {p.description}" for p in pending]
    queued = client.queued()
    if queued:
        lines.append(f"queued: {len(queued)}")
        lines += [f"  #{p.id} {p.description}" for p in queued]
    run = client.current_run
    if run is None:
        lines.append("run: none")
    else:
        progress = snap.progress[-1] if snap.progress else None
        where = (f" {progress.percent:.0f}% step {progress.step}, {progress.remaining_s:.0f}s "
                 f"left" if progress else "")
        ahead = " (speculative)" if run.speculative else ""
        lines.append(f"run: {run.run_id} experiment #{run.experiment_id} {run.description}"
                     f"{ahead}{where}")
    return "\n".join(lines)


def _stop(args) -> int:
    from engine.client import CommandRefused
    workspace = existing_workspace(args.workspace)
    client = attach(workspace)
    stopped: list[ev.SessionStopped] = []
    client.subscribe(lambda event: stopped.append(event)
                     if isinstance(event, ev.SessionStopped) else None)
    try:
        client.stop()
    except CommandRefused:
        if client.connected:          # refused; gone is what stopping looks like too
            raise
    client.wait(timeout=60)
    client.close()
    print("pairlab: engine stopped" + (f"; {stopped[0].summary}" if stopped else ""))
    return 0


def _init(args) -> int:
    from engine.workspace import WorkspaceError, adopt, init
    try:
        if args.adopt:
            ws = adopt(args.dir, targets=args.targets or ["train.py"],
                       run_command=shlex.split(args.run_command) if args.run_command else None, metric_source=args.metric or "summary_line",
                       tag=args.tag)
        else:
            if args.targets or args.run_command or args.metric:
                raise UserError("--target, --run and --metric go with --adopt")
            ws = init(args.dir, tag=args.tag)
    except WorkspaceError as exc:
        raise UserError(str(exc)) from exc
    print(f"workspace ready: {ws.root} (branch {ws.config.branch})")
    if ws.config.budget_from:
        print(f"training budget {ws.config.budget_s:g}s, as {ws.config.budget_from} states it")
    return 0


def _report(args) -> int:
    from engine.journal import Journal
    from engine.report import write_report
    from engine.workspace import WorkspaceError, Workspace, default_workspace_dir
    try:
        ws = Workspace.open(args.workspace or default_workspace_dir())
    except WorkspaceError as exc:
        raise UserError(str(exc)) from exc
    png, md = write_report(Journal(ws.pairlab_dir / "journal.db"), args.out or ws.root)
    print(f"wrote {png}\nwrote {md}")
    return 0


def _headless(args) -> int:
    from engine.headless import run_engine
    return run_engine(args)
