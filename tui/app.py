"""pairlab's Textual app: attributes down, messages up, the engine never blocked.

`run_app(session)` is the entry point the CLI calls. The app subscribes an `EventBridge`
to the session (engine threads post messages through it), shows what the session already
knows, then starts the loop; quitting stops the session in a worker and exits."""

from __future__ import annotations

from textual import events, on, work
from textual.app import App
from textual.binding import Binding

from engine.events import DraftFailed, DraftStarted
from tui.bridge import FLUSH_INTERVAL_S, EventBridge
from tui.messages import DeviceUpdate, EngineEvent, LogBatch, ProgressBatch, ReasoningBatch
from tui.screens.main import MainScreen
from tui.screens.modals import ConfirmQuitScreen
from tui.widgets.device import DevicePanel
from tui.widgets.log import MAX_LOG_LINES


class PairlabApp(App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "pairlab"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [Binding("ctrl+q", "request_quit", "Quit", id="quit-app", show=False, priority=True)]

    def __init__(self, session, *, autostart: bool = True) -> None:
        super().__init__()
        self.session = session
        self.autostart = autostart
        self.bridge = EventBridge(self, max_log_lines=MAX_LOG_LINES)
        self.main = MainScreen(session)
        self._quitting = False

    def get_default_screen(self) -> MainScreen:
        return self.main

    def main_ready(self) -> None:
        """Called by the main screen once mounted: from here on events have somewhere to go."""
        self.session.subscribe(self.bridge)
        self.main.load_snapshot()
        self.set_interval(FLUSH_INTERVAL_S, self.bridge.flush)
        if self.autostart:
            self._start_session()

    @work(thread=True, exit_on_error=False)
    def _start_session(self) -> None:
        # start() restores the journal and touches git: off the UI thread.
        try:
            self.session.start()
        except Exception as error:
            self.call_from_thread(self.notify, f"the session did not start: {error}",
                                  severity="error", timeout=30)

    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, events.Key) and self.main.is_mounted:
            self.main.diff.nudge.key_pressed()      # someone is here: no nudge for a while
        await super().on_event(event)

    # ------------------------------------------------------------------ engine messages

    @on(EngineEvent)
    async def _engine_event(self, message: EngineEvent) -> None:
        if isinstance(message.event, (DraftStarted, DraftFailed)):
            await self.main.apply_draft_event(message.event)
        self.main.apply_event(message.event)

    @on(ReasoningBatch)
    async def _reasoning(self, message: ReasoningBatch) -> None:
        await self.main.reasoning.append(message.draft_id, message.chunks)

    @on(LogBatch)
    def _log(self, message: LogBatch) -> None:
        self.main.log_panel.write(message.run_id, message.lines, message.dropped, message.live)

    @on(ProgressBatch)
    def _progress(self, message: ProgressBatch) -> None:
        self.main.apply_progress(message.samples)

    @on(DeviceUpdate)
    def _device(self, message: DeviceUpdate) -> None:
        self.main.query_one(DevicePanel).show(message.sample)

    # ------------------------------------------------------------------ quitting

    def action_request_quit(self) -> None:
        if self._quitting:
            return
        run = self.main.run_in_flight
        if run is None:
            self._begin_shutdown()
            return

        def answered(quit_now: bool | None) -> None:
            if quit_now:
                self._begin_shutdown()

        self.push_screen(ConfirmQuitScreen(run.description), answered)

    def _begin_shutdown(self) -> None:
        self._quitting = True
        self.main.status.state, self.main.status.detail = "stopping", "the journal keeps everything"
        self.main.status.redraw()
        self._stop_session()

    @work(thread=True, exit_on_error=False)
    def _stop_session(self) -> None:
        try:
            self.session.stop()
        finally:
            self.call_from_thread(self.exit, 0)


def run_app(session) -> int:
    """Run the app on `session` until the user quits; the session is stopped on the way out."""
    app = PairlabApp(session)
    try:
        code = app.run()
    finally:
        session.stop()
    return code or 0
