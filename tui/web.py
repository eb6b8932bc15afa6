"""`pairlab web`: the app in a browser, served by textual-serve on 127.0.0.1 only.

Each browser tab runs its own app process (`pairlab attach`), one more client of the
workspace's engine, so a tab closed or reloaded never touches the loop. textual-serve has no
authentication: it is bound to the loopback address and reached from elsewhere through an
SSH tunnel (`ssh -L 8000:127.0.0.1:8000 host`, then http://127.0.0.1:8000; the same port on
both ends, since the page names the address it was served on).
"""

from __future__ import annotations

import shlex
import sys

LOOPBACK = "127.0.0.1"
DEFAULT_PORT = 8000


class WebRefused(Exception):
    """What the user asked `pairlab web` for cannot be served; the message says why."""


def check_host(host: str) -> str:
    if host != LOOPBACK:
        raise WebRefused(
            f"pairlab web serves on {LOOPBACK} only, not {host}: the browser view has no "
            f"login, so anyone who reaches the port could steer the loop. From another "
            f"machine, tunnel over SSH: `ssh -L {DEFAULT_PORT}:{LOOPBACK}:{DEFAULT_PORT} "
            f"HOST`, then open http://{LOOPBACK}:{DEFAULT_PORT}")
    return host


def app_command(workspace_root) -> str:
    """What each browser tab runs: the app attached to the workspace's engine."""
    return shlex.join([sys.executable, "-m", "pairlab", "attach",
                       "--workspace", str(workspace_root)])


def serve(workspace_root, port: int = DEFAULT_PORT, host: str = LOOPBACK) -> None:
    """Serve until interrupted (Ctrl+C or SIGTERM)."""
    from textual_serve.server import Server
    check_host(host)
    if not 0 < port < 65536:
        raise WebRefused(f"--port must be between 1 and 65535, not {port}")
    server = Server(app_command(workspace_root), host=host, port=port, title="pairlab")
    print(f"pairlab web: serving the app on http://{host}:{port} (each tab is its own "
          f"client of the engine; Ctrl+C stops serving, the engine goes on)", flush=True)
    try:
        server.serve()
    except OSError as exc:
        raise WebRefused(f"cannot serve on {host}:{port}: {exc.strerror or exc}; choose "
                         f"another port with --port") from exc
