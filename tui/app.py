"""pairlab's Textual app: attributes down, messages up, the engine never blocked.

The app runs on anything with the Session facade: the CLI gives it an `EngineClient`
attached to the workspace's engine; tests may give it an in-process Session. It subscribes an
`EventBridge` (events arrive on other threads and are posted through it), shows what the
engine already knows, then follows the live events.

`q` detaches: the app exits and the engine's loop goes on. Stopping the loop is its own key
(`S`), which asks first while a run is in flight. If the engine dies, the app says so and
offers to restart it (exit code EXIT_RESTART: the CLI restarts it, it resumes from the
journal, and a new app attaches)."""

from __future__ import annotations

import asyncio

from textual import events, on, work
from textual.app import App
from textual.binding import Binding
from textual.message import Message

from engine.base.events import DraftFailed, DraftStarted
from engine.service.client import EngineClient, EngineLost, Resynced
from tui.bridge import FLUSH_INTERVAL_S, EventBridge
from tui.collector import TICK_S as COLLECT_TICK_S
from tui.collector import ScheduledCollector
from tui.messages import DeviceUpdate, EngineEvent, LogBatch, ProgressBatch, ReasoningBatch
from tui.screens.main import MainScreen
from tui.screens.modals import ConfirmStopScreen, EngineLostScreen
from tui.widgets.device import DevicePanel
from tui.widgets.log import MAX_LOG_LINES

# The app's exit code when the user asked to restart an engine that died.
EXIT_RESTART = 75


class PairlabApp(App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "pairlab"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [Binding("ctrl+q", "detach", "Detach", id="detach-app", show=False, priority=True)]

    def __init__(self, session, *, autostart: bool = True, read_only: bool = False) -> None:
        super().__init__()
        self.session = session
        self.autostart = autostart
        self.read_only = read_only
        self.bridge = EventBridge(self._post_in_order, max_log_lines=MAX_LOG_LINES)
        self._event_loop: asyncio.AbstractEventLoop | None = None   # set once the app runs
        self.main = MainScreen(session, read_only=read_only)
        self._quitting = False
        self.collector = ScheduledCollector()
        # Scrolls and the rest at once: an animated one-line scroll first moves on the
        # animator's next tick, a frame after the key; over SSH every step is a frame sent.
        self.animation_level = "none"

    def get_default_screen(self) -> MainScreen:
        return self.main

    def main_ready(self) -> None:
        """Called by the main screen once mounted: from here on events have somewhere to go."""
        self._event_loop = asyncio.get_running_loop()
        self.session.subscribe(self.bridge)
        self.main.load_snapshot()
        self.set_interval(FLUSH_INTERVAL_S, self.bridge.flush)
        if self.autostart:
            self._start_session()
        self.call_after_refresh(self.collector.start)
        self.set_interval(COLLECT_TICK_S, self.collector.tick)

    def on_unmount(self) -> None:
        self.collector.stop()

    def _post_in_order(self, message: Message) -> None:
        """Queue a message from any thread, in the order of the calls. Textual queues a post
        made on the app's thread at once but hands one from another thread to the event loop,
        so the bridge's flush timer (on the app's thread) could overtake an event an engine
        thread had just posted: a run's first log lines came before its start and were
        dropped as late lines of the run before. Through the loop, every post keeps its place."""
        try:
            self._event_loop.call_soon_threadsafe(self.post_message, message)
        except RuntimeError:
            pass                                    # the loop has closed: the app is gone

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
            if self.screen is self.main and await self._run_binding_now(event):
                return
        await super().on_event(event)

    async def _run_binding_now(self, event: events.Key) -> bool:
        """Run the key's binding as it arrives. Textual runs a key's (non-priority) binding
        only once the key has bubbled from the focused widget up to the app, a message queue
        a hop, and a frame could render between hops: on a busy screen a key waited up to
        50 ms before its action ran (issue 10). The main screen's widgets handle keys by
        bindings alone (no key handlers, no text input), so the binding the bubble would
        reach is the one the screen's active bindings name: the focused widget's first, then
        its ancestors', the screen's and the app's, as Textual resolves them."""
        active = self.screen.active_bindings.get(event.key)
        if active is None or not active.enabled:
            return False
        await self.run_action(active.binding.action, active.node)
        return True

    # ------------------------------------------------------------------ engine messages

    @on(EngineEvent)
    async def _engine_event(self, message: EngineEvent) -> None:
        event = message.event
        if isinstance(event, EngineLost):
            self._engine_lost(event)
            return
        if isinstance(event, Resynced):
            self.main.load_snapshot()
            return
        if isinstance(event, (DraftStarted, DraftFailed)):
            await self.main.apply_draft_event(event)
        self.main.apply_event(event)

    def _engine_lost(self, event: EngineLost) -> None:
        self.main.engine_lost(event)
        if event.stopped or self._quitting:
            return

        def answered(restart: bool | None) -> None:
            self.exit(EXIT_RESTART if restart else 1)

        self.push_screen(EngineLostScreen(event.message), answered)

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

    # ------------------------------------------------------------------ leaving

    def action_detach(self) -> None:
        """Leave the app; the engine's loop goes on."""
        self._quitting = True
        self.exit(0)

    def action_request_stop(self) -> None:
        """Stop the engine's loop (for every client), then leave; asks while a run trains."""
        if self._quitting or self.read_only:
            return
        run = self.main.run_in_flight
        if run is None:
            self._begin_stop()
            return

        def answered(stop_now: bool | None) -> None:
            if stop_now:
                self._begin_stop()

        self.push_screen(ConfirmStopScreen(run.description), answered)

    def _begin_stop(self) -> None:
        self._quitting = True
        self.main.status.state, self.main.status.detail = "stopping", "the journal keeps everything"
        self.main.status.redraw()
        self._stop_session()

    @work(thread=True, exit_on_error=False)
    def _stop_session(self) -> None:
        try:
            self.session.stop()
        except Exception as error:            # e.g. the engine went away meanwhile
            self.call_from_thread(self.notify, f"stop: {error}", severity="error")
        finally:
            self.call_from_thread(self.exit, 0)


def run_app(client: EngineClient) -> int:
    """The app on an attached engine until the user leaves. Detaching leaves the engine
    running; the exit code is EXIT_RESTART when the user asked to restart a dead engine."""
    app = PairlabApp(client, read_only=client.read_only)
    try:
        code = app.run() or 0
        engine_goes_on = not client.stopped
    finally:
        client.close()
    if code == 0 and engine_goes_on:
        print("pairlab: detached; the engine's loop goes on (`pairlab` or `pairlab attach` "
              "comes back, `pairlab status` shows where it is, `pairlab stop` ends it)")
    return code
