"""The engine as its own process: the command that runs it, starting it detached, and
attaching an app's client to it."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time

from engine.base import api_key
from pairlab.arguments import LOOP_OPTIONS
from pairlab.sessions import UserError

ENGINE_ARGS_NAME = "engine.json"      # how the running engine was started: a restart reuses it
ENGINE_START_TIMEOUT_S = 120.0        # a first start may import torch on a loaded machine


def engine_argv(workspace, args=None) -> list[str]:
    """The command that runs this workspace's engine: `pairlab headless` with the flags.
    With -P: the folder the user is in is not on the engine's path (nor, so, the run's)."""
    argv = [sys.executable, "-P", "-m", "pairlab", "headless", "--workspace", str(workspace.root)]
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
    from engine.service.client import connect
    from engine.service.server import LOG_NAME, ServiceError, socket_path
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
    from engine.service.client import connect
    from engine.service.server import ServiceError, socket_path
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
