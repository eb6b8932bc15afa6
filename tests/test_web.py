"""`pairlab web` in a real headless browser (Debian's chromium, driven by selenium): the page
shows the app's panels, a key pressed in the page reaches the engine, and the server binds
127.0.0.1 only."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest
from test_service_support import WAIT_S, Watch, engine_env, engine_pid, wait_gone  # noqa: F401

from engine.base.events import StateChanged, SteeringNote
from engine.service.client import connect
from engine.service.server import socket_path
from pairlab.cli import main
from tui.web import LOOPBACK

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (apt-get install -y chromium "
           "chromium-driver; .ci/run installs them)")]
WINDOW = (1400, 900)
# Records what the app writes to the terminal: xterm.js draws on a canvas, so the page's DOM
# holds no text; the bytes the page hands the terminal are what it shows.
CAPTURE_TERMINAL = """
window.__terminalText = "";
const NativeSocket = window.WebSocket;
const decoder = new TextDecoder();
window.WebSocket = function (url, protocols) {
  const socket = new NativeSocket(url, protocols);
  socket.addEventListener("message", (event) => {
    if (typeof event.data !== "string") {
      window.__terminalText = (window.__terminalText +
        decoder.decode(event.data, {stream: true})).slice(-2000000);
    }
  });
  return socket;
};
window.WebSocket.prototype = NativeSocket.prototype;
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def wait_until(condition, what: str, timeout: float = WAIT_S):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def serving(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--enable-unsafe-swiftshader", f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": CAPTURE_TERMINAL})
    yield driver
    driver.quit()


@pytest.fixture
def web_server(tiny_workspace, engine_env):
    """`pairlab web` on a free port; it starts the workspace's engine (review mode, the
    offline tuner, tiny runs). Yields (port, server process)."""
    root = tiny_workspace.root
    engine_env.append(root)
    port = free_port()
    log = (root / ".pairlab" / "web.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "pairlab", "web", "--workspace", str(root), "--port", str(port),
         "--agent", "tuner", "--mode", "review", "--budget", "5", "--noise-repeats", "0"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: serving(port) or server.poll() is not None, "the web server")
        assert server.poll() is None, (root / ".pairlab" / "web.log").read_text()
        yield port, server
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        pid = engine_pid(root)
        if pid and psutil.pid_exists(pid):
            assert main(["stop", "--workspace", str(root)]) == 0
            wait_gone(pid)


def test_the_page_shows_the_panels_and_its_keys_reach_the_engine(web_server, browser,
                                                                tiny_workspace, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By
    port, _ = web_server
    client = connect(socket_path(tiny_workspace.pairlab_dir), read_only=True)
    watch = Watch(client)
    try:
        browser.get(f"http://{LOOPBACK}:{port}")
        for title in ("agent reasoning", "training log"):
            wait_until(lambda: title in browser.execute_script("return window.__terminalText"),
                       f"the page's terminal to show the {title} panel")
        wait_until(lambda: browser.execute_script(
            "return document.body.classList.contains('-first-byte')"), "the terminal to show")
        shot = tmp_path / "web.png"
        assert browser.save_screenshot(str(shot))
        if os.environ.get("PAIRLAB_WEB_SCREENSHOT"):    # e.g. to retake the README's
            shutil.copyfile(shot, os.environ["PAIRLAB_WEB_SCREENSHOT"])
        image = Image.open(shot).convert("RGB")
        assert image.size[0] >= WINDOW[0] // 2 and image.size[1] >= WINDOW[1] // 2, image.size
        # panels drawn: many colours, and no one colour covers nine tenths of the page
        colours = image.getcolors(maxcolors=1 << 20)
        assert len(colours) > 20
        assert max(colours)[0] < 0.9 * image.size[0] * image.size[1]

        keys = browser.find_element(By.CSS_SELECTOR, ".xterm-helper-textarea")
        keys.send_keys("p")                          # pause: the engine's state changes
        watch.wait_for(lambda e: isinstance(e, StateChanged) and e.state == "paused",
                       "the engine to pause on the page's key")
        keys.send_keys("s")                          # a steering note, typed in the page
        wait_until(lambda: "note to the agent" in browser.execute_script(
            "return window.__terminalText"), "the note input to open")
        keys.send_keys("try a wider model\n")
        note = watch.wait_for(lambda e: isinstance(e, SteeringNote), "the note to arrive")
        assert note.text == "try a wider model"
    finally:
        client.close()


def test_the_server_binds_the_loopback_address_only(web_server):
    port, server = web_server
    listening = [c.laddr for c in psutil.Process(server.pid).net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN]
    assert listening and {address.ip for address in listening} == {LOOPBACK}
    others = [a.address for addresses in psutil.net_if_addrs().values() for a in addresses
              if a.family == socket.AF_INET and not a.address.startswith("127.")]
    for address in others:                          # the machine's other addresses: refused
        with pytest.raises(OSError):
            socket.create_connection((address, port), timeout=2).close()


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "localhost"])
def test_any_other_host_is_refused_with_the_reason(tmp_path, capsys, host):
    assert main(["web", "--workspace", str(tmp_path / "ws"), "--host", host]) == 2
    err = capsys.readouterr().err
    assert f"serves on 127.0.0.1 only, not {host}" in err and "ssh -L 8000:127.0.0.1:8000" in err
    assert not (tmp_path / "ws").exists()            # refused before anything was created
