"""`pairlab` command line: the app (default), headless, init, prepare, report."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

from engine import events as ev


def _loop_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", type=Path, default=None,
                        help="research workspace (default: $PAIRLAB_WORKSPACE or "
                             "~/pairlab-workspace, created on first use)")
    parser.add_argument("--agent", choices=("auto", "claude", "tuner"), default="auto",
                        help="auto: Claude when ANTHROPIC_API_KEY is set, else the offline tuner")
    parser.add_argument("--mode", choices=("review", "auto"), default=None,
                        help="review: every patch waits for you; auto: none do")
    parser.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                        help="training seconds per experiment (default 300)")
    parser.add_argument("--max-experiments", type=int, default=None, metavar="N")
    parser.add_argument("--max-cost", type=float, default=None, metavar="USD")
    parser.add_argument("--max-hours", type=float, default=None, metavar="H")
    parser.add_argument("--drafts-ahead", type=int, default=None, metavar="N",
                        help="proposals kept ready ahead of the trainer (default 1)")
    parser.add_argument("--noise-repeats", type=int, default=None, metavar="N",
                        help="extra baseline runs that measure the noise floor (default 2)")
    parser.add_argument("--device", choices=("cpu", "cuda", "mps"), default=None)
    parser.add_argument("--model", default=None, help="Claude model id")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pairlab",
        description="A terminal copilot for autonomous LLM-training research. With no "
                    "command, opens the app on the workspace and starts the loop.")
    _loop_flags(parser)
    sub = parser.add_subparsers(dest="command")

    headless = sub.add_parser("headless", help="run the loop without the app")
    _loop_flags(headless)
    headless.add_argument("--jsonl", action="store_true", help="print events as JSON lines")

    init = sub.add_parser("init", help="create a research workspace, or adopt a repo")
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

    sub.add_parser("prepare", help="prepare training data and tokenizer", add_help=False)

    report = sub.add_parser("report", help="write progress.png and a Markdown summary")
    report.add_argument("--workspace", type=Path, default=None)
    report.add_argument("--out", type=Path, default=None,
                        help="output directory (default: the workspace)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["prepare"]:
        from nanochat import prepare
        return prepare.main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        if args.command == "init":
            return _init(args)
        if args.command == "report":
            return _report(args)
        session = _open_session(args)
        if args.command == "headless":
            return _headless(session, jsonl=args.jsonl)
        from tui.app import run_app
        return run_app(session)
    except UserError as exc:
        print(f"pairlab: {exc}", file=sys.stderr)
        return 2


class UserError(Exception):
    """A mistake in what the user asked for; printed without a traceback."""


def _open_session(args):
    from engine.session import Session, SessionSettings
    from engine.workspace import WorkspaceError, open_or_init
    from engine.agents import make_agent
    try:
        workspace = open_or_init(args.workspace)
    except WorkspaceError as exc:
        raise UserError(str(exc)) from exc
    config = workspace.config
    settings = SessionSettings(
        mode=args.mode or config.mode,
        budget_s=args.budget if args.budget is not None else config.budget_s,
        max_experiments=args.max_experiments, max_cost=args.max_cost,
        max_hours=args.max_hours,
        drafts_ahead=args.drafts_ahead if args.drafts_ahead is not None else config.drafts_ahead,
        noise_repeats=(args.noise_repeats if args.noise_repeats is not None
                       else config.noise_repeats),
        device=args.device or config.device)
    agent = make_agent(args.agent, device=settings.device or "cpu", model=args.model)
    return Session(workspace, agent, settings)


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


# ---------------------------------------------------------------------- headless


def _headless(session, jsonl: bool) -> int:
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
    return 0


COMMANDS_HELP = ("commands: accept ID | veto ID REASON... | pause | resume | kill | "
                 "mode auto|review | pending | quit")


def _read_commands(session) -> None:
    """Review decisions and controls on stdin, one per line."""
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        try:
            reply = _command(session, words)
        except (KeyError, ValueError) as exc:
            reply = f"error: {exc.args[0] if exc.args else exc}"
        except Exception as exc:                  # e.g. a refused edit: say it, keep reading
            reply = f"error: {exc}"
        if reply:
            print(f"pairlab: {reply}", file=sys.stderr, flush=True)


def _command(session, words: list[str]) -> str:
    verb, rest = words[0].lower(), words[1:]
    if verb == "accept" and len(rest) == 1:
        session.accept(int(rest[0]))
        return ""
    if verb == "veto" and rest:
        session.veto(int(rest[0]), " ".join(rest[1:]))
        return ""
    if verb == "pause":
        session.pause()
        return ""
    if verb == "resume":
        session.resume()
        return ""
    if verb == "kill":
        return "" if session.kill_run() else "no run in flight"
    if verb == "mode" and rest:
        session.set_mode(rest[0])
        return ""
    if verb == "pending":
        return "; ".join(f"{p.id}: {p.description}" for p in session.pending()) or "none"
    if verb in ("quit", "exit"):
        threading.Thread(target=session.stop, daemon=True).start()
        return ""
    return COMMANDS_HELP


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
        if isinstance(event, ev.ReasoningDelta):
            buffered = self._reasoning.get(event.draft_id, "") + event.text
            *done, rest = buffered.split("\n")
            self._reasoning[event.draft_id] = rest
            return [f"  {event.kind:8} {line}" for line in done if line.strip()]
        if isinstance(event, ev.ProposalReady):
            p = event.proposal
            self._reasoning.pop(p.id, None)
            return [f"proposal {p.id}: {p.description}", f"  hypothesis: {p.hypothesis}",
                    *[f"  {line}" for line in p.diff.splitlines()],
                    f"  ({p.agent}, {p.usage.input_tokens + p.usage.output_tokens} tokens, "
                    f"${p.usage.cost_usd:.4f})"]
        if isinstance(event, ev.LogLines):
            return [f"  | {line}" for line in event.lines]
        if isinstance(event, ev.RunProgress):
            now = time.monotonic()
            if now - self._last_progress < self.PROGRESS_EVERY_S:
                return []
            self._last_progress = now
            return [f"  step {event.step} loss {event.loss:.4f} {event.percent:.0f}% "
                    f"({event.remaining_s:.0f}s left)"]
        if isinstance(event, ev.RunStarted):
            return [f"run {event.run_id} started: {event.description} at {event.commit[:7]}"]
        if isinstance(event, ev.RunFinished):
            r, e = event.result, event.experiment
            bpb = f"{r.val_bpb:.6f}" if r.val_bpb is not None else "-"
            extra = f" ({r.message})" if r.message else ""
            return [f"run {r.run_id} finished: {r.status.value} val_bpb {bpb}{extra}"
                    + (f" [experiment {e.id}]" if e else "")]
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
            if event.stage == self._last_stage:
                return []
            self._last_stage = event.stage
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
