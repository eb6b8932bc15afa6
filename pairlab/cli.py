"""`pairlab` command line: the app on the workspace's engine (default), attach, web, status,
stop, headless, init, prepare, report.

The engine is its own process: `pairlab` attaches to the workspace's engine if one runs, or
starts one detached (`pairlab headless` in a new session, its output in .pairlab/engine.log)
and then attaches; quitting the app leaves it running.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

from engine.base import api_key
from engine.base import events as ev
from engine.base.records import RunStatus
from pairlab.arguments import COMMANDS, build_parser  # noqa: F401  (tests read COMMANDS)
from pairlab.engine_process import attach, attach_or_start, restart_argv, start_engine  # noqa: F401
from pairlab.sessions import (UserError, executor_settings, existing_workspace,  # noqa: F401
                              open_workspace, settings_from_args)


def main(argv: list[str] | None = None) -> int:
    """The `pairlab` command. Without argv it is this process's entry point (the console
    script, `python -m pairlab`): the API key goes out of its environment first."""
    if argv is None:
        api_key.take()
        argv = sys.argv[1:]
    if argv[:1] == ["prepare"]:
        return _prepare(argv[1:])
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


def _prepare(argv: list[str]) -> int:
    """nanochat's preparation, and with --compile-seed the engine's compile cache seed."""
    from nanochat import prepare
    parser = prepare.build_parser()
    parser.add_argument("--compile-seed", action="store_true",
                        help="also compile the shipped train.py once (about a minute on a CPU): "
                             "every workspace's first runs start from that torch.compile cache")
    parser.add_argument("--device", help="the device the seed is compiled for (default: the one "
                                         "training picks)")
    args = parser.parse_args(argv)
    code, dataset = prepare.run(args)
    if code or not args.compile_seed:
        return code
    from engine.run.compile_cache import SEED_FOLDER, write_seed
    print(f"compile seed: {dataset / SEED_FOLDER} ...", flush=True)
    try:
        compiled = write_seed(dataset, args.device, force=args.force)
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print("compile seed: " + ("compiled" if compiled else "already compiled (--force recompiles)"))
    return 0


def _doctor(args) -> int:
    """One line per check; exit 1 when one failed."""
    from engine.run import doctor
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
    view = client.view
    lines = [f"workspace: {client.snapshot.workspace}",
             f"state: {view.state}" + (f" ({view.detail})" if view.detail else ""),
             f"mode: {view.mode}"]
    if view.error and (view.paused or view.stopped):
        lines.append(f"error: {view.error}")
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
        progress = view.progress[-1] if view.progress else None
        where = (f" {progress.percent:.0f}% step {progress.step}, {progress.remaining_s:.0f}s "
                 f"left" if progress else "")
        ahead = " (speculative)" if run.speculative else ""
        lines.append(f"run: {run.run_id} experiment #{run.experiment_id} {run.description}"
                     f"{ahead}{where}")
    return "\n".join(lines)


def _stop(args) -> int:
    from engine.service.client import CommandRefused
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
    from engine.workspace import Workspace, WorkspaceError, default_workspace_dir
    try:
        ws = Workspace.open(args.workspace or default_workspace_dir())
    except WorkspaceError as exc:
        raise UserError(str(exc)) from exc
    png, md = write_report(Journal(ws.pairlab_dir / "journal.db"), args.out or ws.root)
    print(f"wrote {png}\nwrote {md}")
    return 0


def _headless(args) -> int:
    from pairlab.headless import run_engine
    return run_engine(args)
