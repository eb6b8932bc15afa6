"""Snapshots of the main screen with a fixed event script (times fixed, no toasts, no
cursor blink on this screen). Update after a deliberate change with `--snapshot-update`."""

from __future__ import annotations

import asyncio
import time

from test_tui_support import ScriptedSession, history_events

from tui.app import PairlabApp


async def _handled(app) -> None:
    """Every message the bridge has posted so far is handled: the bridge posts through the
    event loop, so a callback queued on the app after one loop turn runs after all of them."""
    app.bridge.flush()
    await asyncio.sleep(0)
    done = asyncio.Event()
    app.call_later(done.set)
    await done.wait()


async def _settle(pilot) -> None:
    """Until the script is on screen, by conditions rather than by time (a loaded machine
    only takes longer): every scripted event handled by the app, then the charts redrawn
    for their laid-out size."""
    app = pilot.app
    assert await asyncio.to_thread(app.session.delivered.wait, 30), "the script never ran"
    await _handled(app)
    deadline = time.monotonic() + 30
    while True:
        await pilot.pause()                # a layout may resize a plot, which asks to redraw
        if app.main.chart.drawn:
            break
        assert time.monotonic() < deadline, "the charts never redrew"
        await pilot.pause(0.05)


def test_main_screen_120x40(snap_compare, tmp_path):
    app = PairlabApp(ScriptedSession(tmp_path, history_events()))
    assert snap_compare(app, terminal_size=(120, 40), run_before=_settle)


def test_main_screen_100x30(snap_compare, tmp_path):
    app = PairlabApp(ScriptedSession(tmp_path, history_events()))
    assert snap_compare(app, terminal_size=(100, 30), run_before=_settle)


def _key_on_panel(panel_id: str, key: str):
    """A run_before: the script on screen, then `key` pressed on that panel."""
    async def press(pilot) -> None:
        await _settle(pilot)
        pilot.app.main.focus_panel(panel_id)
        await pilot.press(key)
        await _settle(pilot)
    return press


def test_main_screen_100x30_switched_to_the_live_loss(snap_compare, tmp_path):
    app = PairlabApp(ScriptedSession(tmp_path, history_events()))
    assert snap_compare(app, terminal_size=(100, 30), run_before=_key_on_panel("chart-panel", "c"))


def test_main_screen_200x50(snap_compare, tmp_path):
    app = PairlabApp(ScriptedSession(tmp_path, history_events()))
    assert snap_compare(app, terminal_size=(200, 50), run_before=_settle)


def test_main_screen_before_the_first_result(snap_compare, tmp_path):
    events = history_events()
    app = PairlabApp(ScriptedSession(tmp_path, events[:2]))
    assert snap_compare(app, terminal_size=(120, 40), run_before=_settle)


def test_main_screen_80x24(snap_compare, tmp_path):
    app = PairlabApp(ScriptedSession(tmp_path, history_events()))
    assert snap_compare(app, terminal_size=(80, 24), run_before=_settle)


def test_main_screen_80x24_on_the_log_panel(snap_compare, tmp_path):
    async def to_log(pilot) -> None:
        await _settle(pilot)
        await pilot.press("tab", "tab", "tab")
        await pilot.pause()

    app = PairlabApp(ScriptedSession(tmp_path, history_events()))
    assert snap_compare(app, terminal_size=(80, 24), run_before=to_log)


def test_main_screen_120x40_log_panel_full_screen(snap_compare, tmp_path):
    app = PairlabApp(ScriptedSession(tmp_path, history_events()))
    assert snap_compare(app, terminal_size=(120, 40), run_before=_key_on_panel("log-panel", "f"))
