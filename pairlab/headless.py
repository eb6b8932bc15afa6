"""The engine in the foreground (`pairlab headless`, and the detached engine `pairlab`
starts): the loop with its events printed, commands on stdin, and the socket apps attach to."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

from engine.base import commands
from engine.base import events as ev
from engine.base.records import RunKind, RunStatus
from pairlab.engine_process import ENGINE_ARGS_NAME, engine_argv
from pairlab.sessions import UserError, make_session, open_workspace, settings_from_args

# runs that measure the best rather than try a change: neither kept nor discarded
MEASUREMENTS = {"baseline": "baseline", "noise": "noise repeat", "rerun": "confirmation re-run"}


def run_engine(args) -> int:
    """The engine in the foreground: the loop, its events printed, commands on stdin, and
    the socket that apps attach to. A detached engine is this with stdin closed."""
    from engine.service.server import EngineLock, EngineService, ServiceError, socket_path
    workspace = open_workspace(args.workspace)
    lock = EngineLock(workspace.pairlab_dir)
    try:
        lock.acquire()
    except ServiceError as exc:
        raise UserError(str(exc)) from exc
    try:
        (workspace.pairlab_dir / ENGINE_ARGS_NAME).write_text(json.dumps(
            {"pid": os.getpid(), "argv": engine_argv(workspace, args)}))
        session = make_session(workspace, args.agent, settings_from_args(args, workspace.config),
                               model=args.model)
        service = EngineService(session, socket_path(workspace.pairlab_dir))
        service.start()
        try:
            return _serve_loop(session, jsonl=args.jsonl)
        finally:
            service.close()
    finally:
        lock.release()


def _serve_loop(session, jsonl: bool) -> int:
    printer = JsonPrinter() if jsonl else ReadablePrinter()
    session.subscribe(printer)
    stop_signals = {"count": 0}

    def on_signal(signum, frame):
        stop_signals["count"] += 1
        if stop_signals["count"] > 1:
            raise KeyboardInterrupt
        print("pairlab: stopping (the run in flight is killed; the journal keeps everything)",
              file=sys.stderr)
        threading.Thread(target=session.stop, daemon=True).start()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    threading.Thread(target=_read_commands, args=(session,), daemon=True,
                     name="pairlab-stdin").start()
    session.start()
    while not session.wait(timeout=0.5):
        pass
    session.stop()
    return 1 if session.failed else 0


def _read_commands(session) -> None:
    """Review decisions and controls on stdin, one per line: a command of
    engine/base/commands.py by its verb (`accept 3`, `veto 3 too slow`), `pending`, `quit`."""
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            reply = _command(session, line)
        except (KeyError, ValueError) as exc:
            reply = f"error: {exc.args[0] if exc.args else exc}"
        except Exception as exc:                  # e.g. a refused edit: say it, keep reading
            reply = f"error: {exc}"
        if reply:
            print(f"pairlab: {reply}", file=sys.stderr, flush=True)


def _command(session, line: str) -> str:
    """What the line asks, done; what to tell the user."""
    verb = line.split()[0].lower()
    if verb == "pending":
        return "; ".join(f"{p.id}: {p.description}" for p in session.pending()) or "none"
    if verb in ("quit", "exit"):
        threading.Thread(target=session.stop, daemon=True).start()
        return ""
    command = commands.parse(line)
    if isinstance(command, commands.Stop):     # the loop stops: nothing to wait for here
        threading.Thread(target=session.send, args=(command,), daemon=True).start()
        return ""
    value = session.send(command)
    if isinstance(command, commands.KillRun):
        return "" if value else "no run in flight"
    return "" if value is None else str(value)


class JsonPrinter:
    def __init__(self):
        self._lock = threading.Lock()

    def __call__(self, event: ev.Event) -> None:
        line = event.to_json()
        with self._lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()


class ReadablePrinter:
    """One readable line per event; progress at most every few seconds; reasoning by line."""

    PROGRESS_EVERY_S = 5.0

    def __init__(self, out=None):
        self._out = out or sys.stdout
        self._lock = threading.Lock()
        self._last_progress = 0.0
        self._reasoning: dict[int, str] = {}
        self._last_stage = ""

    def __call__(self, event: ev.Event) -> None:
        with self._lock:
            for line in self._format(event):
                self._out.write(f"{time.strftime('%H:%M:%S')} {line}\n")
            self._out.flush()

    def _format(self, event: ev.Event) -> list[str]:
        """The event's lines, less what this printer holds back: reasoning until its line
        ends, progress within PROGRESS_EVERY_S of the last, a preparation stage again."""
        if isinstance(event, ev.ReasoningDelta):
            buffered = self._reasoning.get(event.draft_id, "") + event.text
            *done, rest = buffered.split("\n")
            self._reasoning[event.draft_id] = rest
            return [f"  {event.kind:8} {line}" for line in done if line.strip()]
        if isinstance(event, ev.ProposalReady):
            self._reasoning.pop(event.proposal.id, None)   # its draft is done
        if isinstance(event, ev.RunProgress):
            now = time.monotonic()
            if now - self._last_progress < self.PROGRESS_EVERY_S:
                return []
            self._last_progress = now
        if isinstance(event, ev.Preparing):
            if event.stage == self._last_stage:
                return []
            self._last_stage = event.stage
        return event_lines(event)


def event_lines(event: ev.Event) -> list[str]:
    """How an event reads in the headless output, a line or more (none for the events it
    does not show)."""
    if isinstance(event, ev.ProposalReady):
        p = event.proposal
        return [f"proposal {p.id}: {p.description}", f"  hypothesis: {p.hypothesis}",
                *[f"  {line}" for line in p.diff.splitlines()],
                f"  ({p.agent}, {p.usage.input_tokens + p.usage.output_tokens} tokens, "
                f"${p.usage.cost_usd:.4f})"]
    if isinstance(event, ev.LogLines):
        return [f"  | {line}" for line in event.lines]
    if isinstance(event, ev.RunProgress):
        return [f"  step {event.step} loss {event.loss:.4f} {event.percent:.0f}% "
                f"({event.remaining_s:.0f}s left)"]
    if isinstance(event, ev.RunStarted):
        ahead = " (speculative: not accepted yet)" if event.speculative else ""
        slot = f" in slot {event.slot}" if event.slots > 1 else ""
        return [f"run {event.run_id} started{slot}: {event.description} at "
                f"{event.commit[:7]}{ahead}"]
    if isinstance(event, ev.RunAccepted):
        return [f"run {event.run_id} accepted: it trains on as #{event.proposal_id}'s "
                f"experiment"]
    if isinstance(event, ev.RunFinished):
        r, e = event.result, event.experiment
        bpb = f"{r.val_bpb:.6f}" if r.val_bpb is not None else "-"
        extra = f" ({r.message})" if r.message else ""
        outcome = finished_outcome(e.kind if e else RunKind.EXPERIMENT, r.status)
        return [f"run {r.run_id} finished: {outcome} val_bpb {bpb}{extra}"
                + (f" [experiment {e.id}]" if e and e.kind == RunKind.EXPERIMENT else "")]
    if isinstance(event, ev.DecisionMade):
        d = event.decision
        reason = f": {d.reason}" if d.reason else ""
        return [f"proposal {d.proposal_id}: {d.kind.value} by {d.who}{reason}"]
    if isinstance(event, ev.BestUpdated):
        return [f"best val_bpb {event.val_bpb:.6f} at {event.commit[:7]}"]
    if isinstance(event, ev.NoiseFloor):
        return [f"noise floor {event.spread:.6f} from {len(event.samples)} baseline runs"]
    if isinstance(event, ev.Notice):
        hint = f" ({event.hint})" if event.hint else ""
        return [f"{event.level}: {event.message}{hint}"]
    if isinstance(event, ev.StateChanged):
        return [f"[{event.state}] {event.detail}".rstrip()]
    if isinstance(event, ev.Preparing):
        return [f"preparing: {event.stage} ({event.fraction:.0%})"]
    if isinstance(event, ev.ProposalRebased):
        return [f"proposal {event.proposal_id} rebased onto {event.base_commit[:7]}"]
    if isinstance(event, ev.ProposalStale):
        return [f"proposal {event.proposal_id} is stale: {event.reason}"]
    if isinstance(event, ev.DraftFailed):
        return [f"draft {event.draft_id} failed: {event.message}"]
    if isinstance(event, ev.SessionStopped):
        return [f"stopped: {event.reason}", f"  {event.summary}"]
    return []


def finished_outcome(kind: str, status: RunStatus) -> str:
    """How a finished run reads: what it was for a measurement, else its status."""
    label = MEASUREMENTS.get(kind)
    if label is None:
        return status.value
    return label if status in (RunStatus.KEEP, RunStatus.DISCARD) else f"{label} {status.value}"
