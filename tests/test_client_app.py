"""The app on an engine client (real socket, real Session on a real workspace, not started):
it shows the engine's snapshot, decisions reach the engine, a read-only client has no
decision keys, and when the engine dies the app says so and offers the restart."""

from __future__ import annotations

import asyncio

import pytest
from test_tui_support import pilot_test

from engine.agents.tuner import TunerAgent
from engine.service.client import connect
from engine.service.server import EngineService, socket_path
from engine.session import Session, SessionSettings
from engine.workspace import init
from tui.app import EXIT_RESTART, PairlabApp
from tui.screens.main import MainScreen
from tui.screens.modals import EngineLostScreen

SIZE = (120, 40)


@pytest.fixture
def engine(tmp_path):
    workspace = init(tmp_path / "ws", tag="test")
    session = Session(workspace, TunerAgent(), SessionSettings(), monitor=False)
    service = EngineService(session, socket_path(workspace.pairlab_dir))
    service.start()
    yield session, service
    service.close()
    session.journal.close()


async def until(pilot, condition, what: str, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await pilot.pause(0.05)


@pilot_test
async def test_a_key_reaches_the_engine_and_its_answer_comes_back(engine):
    session, service = engine
    client = connect(service.path)
    app = PairlabApp(client)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.main.is_mounted, "the main screen")
        await pilot.press("p")
        await until(pilot, lambda: session.paused, "the engine to pause")
        await until(pilot, lambda: app.main.state == "paused", "the app to show it")
        await pilot.press("q")
    assert app.return_value == 0 and not session.stopped        # q only detached
    client.close()


@pilot_test
async def test_when_the_engine_dies_the_app_says_so_and_offers_a_restart(engine):
    session, service = engine
    client = connect(service.path)
    app = PairlabApp(client)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.main.is_mounted, "the main screen")
        service.close()                      # the connection ends with no SessionStopped
        await until(pilot, lambda: isinstance(app.screen, EngineLostScreen), "the offer")
        assert "The engine stopped unexpectedly" in str(app.screen.query_one("#engine-lost").render())
        assert app.main.state == "engine gone"
        await pilot.press("r")
    assert app.return_value == EXIT_RESTART


@pilot_test
async def test_a_read_only_client_has_no_decision_keys(engine):
    session, service = engine
    client = connect(service.path, read_only=True)
    app = PairlabApp(client, read_only=client.read_only)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.main.is_mounted, "the main screen")
        shown = {b.binding.action for b in app.screen.active_bindings.values()
                 if app.screen.check_action(b.binding.action, ()) is not False}
        assert not shown & MainScreen.DECISION_ACTIONS
        await pilot.press("p", "S")
        await pilot.pause(0.2)
        assert not session.paused and not session.stopped
        await pilot.press("q")
    client.close()
