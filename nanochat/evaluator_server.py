"""
The evaluator, pre-imported: one process that pays for torch's imports once and forks a
fresh evaluation (nanochat/evaluate.py) for each model the engine sends it.

    python -S -P -m nanochat.evaluator_server

Importing torch and torch.export's deserializer takes about 3 s of CPU; scoring a small
model takes a fraction of that. The engine (engine/run/evaluation.py) starts this process
once per set of process-wide settings and sends it one JSON line per evaluation:

    {"model": DIR, "result": FILE, "output": FILE, "cwd": DIR, "env": {...}}

It answers `{"started": PID}` when the fork is made and `{"exited": PID, "returncode": N}`
(negative: killed by that signal, as subprocess reports it) when it ends. Each child takes
the request's environment and imports nanochat.harness and nanochat.evaluate itself, after
the fork: the run settings they read at import are the run's own, and this process never
touches an accelerator (a CUDA context does not survive a fork). The child leads a process
group of its own (the runner kills it by group; the server is in a session of its own), writes its output to the request's file and
dies with this process; this process ends when the engine closes its end of the pipe.
"""

import json
import os
import selectors
import signal
import sys
import traceback

import numpy  # noqa: F401  (imported by nanochat.harness: paid once, here)
import torch  # noqa: F401
import torch._export.serde.serialize  # noqa: F401  (torch._dynamo with it: most of the cost)
from torch.export import graph_signature  # noqa: F401

PR_SET_PDEATHSIG = 1


def evaluate_in_child(request):
    """In the forked child: become the run's evaluator process, then never return."""
    code = 1
    try:
        os.setpgid(0, 0)
        _die_with_parent()
        output = os.open(request["output"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(output, 1)
        os.dup2(output, 2)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        signal.signal(signal.SIGINT, signal.default_int_handler)   # the server ignores it
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        from nanochat import evaluate
        evaluate.main(["--model", request["model"], "--result", request["result"]])
        code = 0
    except SystemExit as exit_:
        if isinstance(exit_.code, int) or exit_.code is None:
            code = exit_.code or 0
        else:
            print(exit_.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def _die_with_parent():
    if sys.platform.startswith("linux"):
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def reply(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def serve():
    """Fork an evaluation per request line on stdin; report each one's exit. Single-threaded
    (a fork copies only the thread that makes it): one selector over stdin and a pidfd per
    child."""
    requests = sys.stdin.fileno()
    selector = selectors.DefaultSelector()
    selector.register(requests, selectors.EVENT_READ)
    children = {}          # pidfd -> pid
    pending = b""
    while True:
        for key, _ in selector.select():
            if key.fd != requests:
                pid = children.pop(key.fd)
                selector.unregister(key.fd)
                os.close(key.fd)
                _, status = os.waitpid(pid, 0)
                reply({"exited": pid, "returncode": os.waitstatus_to_exitcode(status)})
                continue
            data = os.read(requests, 1 << 16)
            if not data:                   # the engine is gone: so are its evaluations
                for pid in children.values():
                    try:
                        os.killpg(pid, signal.SIGKILL)
                    except OSError:
                        pass
                return
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                request = json.loads(line)
                sys.stdout.flush()         # the child must not inherit unwritten replies
                pid = os.fork()
                if pid == 0:
                    evaluate_in_child(request)
                try:       # its own group before anyone hears of it: a kill must reach it
                    os.setpgid(pid, pid)
                except OSError:
                    pass   # it did so itself, or is already gone
                pidfd = os.pidfd_open(pid)
                children[pidfd] = pid
                selector.register(pidfd, selectors.EVENT_READ)
                reply({"started": pid})


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # a Ctrl-C is the engine's to handle
    serve()
