"""How fast the TUI ingests a training log, and whether it stays responsive meanwhile.

Runs the real app headless (Textual's run_test) on an idle stand-in session and feeds
LogLines and LiveLine events into the app's engine bridge from a producer thread, exactly
as the runner's callbacks would (finished lines, and the `\r` line rewritten in between).
Prints:

  first paint        process start -> first frame of the main screen (fresh interpreter)
  per offered rate   lines/s accepted by the app and written into the log widget, and per
                     key the worst and median key-to-screen latency (key press -> next
                     repaint showing its effect): up/down scroll the log, f full-screens
                     the focused panel, the second f restores the layout
  memory             RSS after every quarter of the lines, to see that it stays flat

Targets (issues 4 and 10): >= 20,000 lines/s, every key < 50 ms, memory flat, first paint
< 1.5 s. Usage: python bench/tui_log_throughput.py [--quick] [--seconds 3] [--rates ...]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# The app's package first: it sets Textual's frame rate, read when Textual is first imported.
from textual import events  # noqa: E402

from engine.base.events import LiveLine, LogLines, RunStarted  # noqa: E402
from engine.base.view import View  # noqa: E402
from tui.app import PairlabApp  # noqa: E402
from tui.widgets.log import LogPanel  # noqa: E402
from tui.widgets.panel import PanelGrid  # noqa: E402

BATCH_INTERVAL_S = 0.01          # the runner hands over lines in batches; 100 batches a second
LINE = "step {:07d} (42.0%) | loss: 3.123456 | lrm: 1.00 | dt: 120ms | tok/sec: 28,000 | mfu: 1.2%"


class IdleSession:
    """The snapshot half of the Session API with nothing in it: the bench drives events."""

    def subscribe(self, callback) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self, timeout: float = 10) -> None:
        pass

    def view(self) -> View:
        return View(state="training")


def produce(bridge, rate: int, seconds: float, start_index: int) -> int:
    """Offer `rate` lines/s for `seconds` in runner-sized batches; returns lines offered."""
    per_batch = max(1, int(rate * BATCH_INTERVAL_S))
    offered = 0
    begin = time.perf_counter()
    while (elapsed := time.perf_counter() - begin) < seconds:
        due = int(rate * elapsed) - offered
        if due > 0:
            count = min(due, per_batch * 4)
            first = start_index + offered
            bridge(LogLines("bench", [LINE.format(i) for i in range(first, first + count)]))
            bridge(LiveLine("bench", "\r" + LINE.format(first + count)))
            offered += count
        time.sleep(BATCH_INTERVAL_S)
    return offered


class RepaintClock:
    """Timestamps of the frames the app hands to its driver (headless: rendered, not written)."""

    def __init__(self, app) -> None:
        self.times: list[float] = []
        original = app._display

        def timed_display(screen, renderable) -> None:
            original(screen, renderable)
            if renderable is not None:
                self.times.append(time.perf_counter())

        app._display = timed_display

    async def next_after(self, moment: float, timeout: float = 5.0) -> float:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            later = [t for t in self.times if t > moment]
            if later:
                return later[0]
            await asyncio.sleep(0.001)
        return float("inf")


async def key_latency(pilot, clock: RepaintClock, acted: list[float], key: str) -> float:
    """Post `key` as the terminal driver would and time it until the first frame rendered
    after its action ran."""
    count = len(acted)
    start = time.perf_counter()
    pilot.app.post_message(events.Key(key, None))
    while len(acted) == count:
        await asyncio.sleep(0.0005)
    painted = await clock.next_after(acted[-1])
    return painted - start


def time_action(target, name: str, acted: list[float]) -> None:
    """Record when `target.<name>` (a key's action) runs."""
    original = getattr(target, name)

    def timed(*args) -> None:
        original(*args)
        acted.append(time.perf_counter())

    setattr(target, name, timed)


async def run_rates(rates: list[int], seconds: float) -> None:
    app = PairlabApp(IdleSession(), autostart=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause(0.2)
        app.bridge(RunStarted("bench", 1, 1, "abc1234", "bench", 300.0, "/dev/null"))
        await pilot.pause(0.2)
        panel = app.main.query_one(LogPanel)
        clock = RepaintClock(app)
        log = panel.log
        app.bridge(LogLines("bench", [LINE.format(i) for i in range(500)]))
        await pilot.pause(0.3)                        # lines to scroll through, even idle
        log.focus()
        await pilot.pause(0.3)                        # the focus change restyles its panel
        acted: list[float] = []
        time_action(log, "action_scroll_up", acted)
        time_action(log, "action_scroll_down", acted)
        time_action(app.main, "action_toggle_maximize", acted)
        # up/down scroll the focused log (the common key while a run trains); f full-screens
        # the log panel, the next f restores the layout: the most expensive keys there are.
        keys = [("up", "up"), ("down", "down"), ("f", "f full"), ("f", "f back")]
        names = [name for _, name in keys]
        print(f"{'offered/s':>10} {'accepted/s':>11} {'written/s':>10}   "
              + " ".join(f"{name:>15}" for name in names))
        print(f"{'':>35}" + " ".join(f"{'worst  median':>15}" for _ in names) + "   (ms)")
        index = 500
        reference: dict[str, float] = {}
        for rate in rates:
            accepted0, written0 = app.bridge.lines_accepted, panel.lines_written
            result: dict[str, int] = {}
            producer = threading.Thread(
                target=lambda: result.update(n=produce(app.bridge, rate, seconds, index)))
            begin = time.perf_counter()
            producer.start()
            latencies: dict[str, list[float]] = {name: [] for name in names}
            presses = 0
            while producer.is_alive():
                key, name = keys[presses % len(keys)]
                latencies[name].append(await key_latency(pilot, clock, acted, key))
                presses += 1
                await pilot.pause(0.05)
            producer.join()
            await pilot.pause(0.2)                    # let the last flush land
            elapsed = time.perf_counter() - begin
            index += result["n"]
            accepted = app.bridge.lines_accepted - accepted0
            written = panel.lines_written - written0
            figures = []
            for name in names:
                values = sorted(latencies[name]) or [float("nan")]
                figures.append(f"{values[-1] * 1000:7.1f} {values[len(values) // 2] * 1000:7.1f}")
            print(f"{rate:>10,} {accepted / seconds:>11,.0f} {written / seconds:>10,.0f}   "
                  + " ".join(f"{figure:>15}" for figure in figures)
                  + f"   ({presses} keys in {elapsed:.1f} s)", flush=True)
            worst = {name: max(latencies[name], default=float("nan")) for name in names}
            if not reference:
                reference = worst                      # the first rate: the same run's baseline
            else:
                print(f"{'':>35}" + " ".join(f"{worst[n] / reference[n]:>14.1f}x" for n in names)
                      + f"   (worst vs the {rates[0]:,} lines/s row)")
            app.main.query_one(PanelGrid).restore()    # after an odd count of f presses


async def run_memory(total: int) -> None:
    app = PairlabApp(IdleSession(), autostart=False)
    process = psutil.Process()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause(0.2)
        app.bridge(RunStarted("bench", 1, 1, "abc1234", "bench", 300.0, "/dev/null"))
        await pilot.pause(0.2)
        print(f"\nmemory while ingesting {total:,} lines (RSS):")
        print(f"  {0:>9,} lines  {process.memory_info().rss / 2**20:7.1f} MiB")
        step = total // 4
        fed = 0
        begin = time.perf_counter()
        while fed < total:
            chunk_end = fed + step
            while fed < chunk_end:
                app.bridge(LogLines("bench", [LINE.format(i) for i in range(fed, fed + 1000)]))
                fed += 1000
                if fed % 20_000 == 0:
                    await pilot.pause(0.01)           # let the app flush as it would live
            await pilot.pause(0.2)
            print(f"  {fed:>9,} lines  {process.memory_info().rss / 2**20:7.1f} MiB")
        print(f"  ({total / (time.perf_counter() - begin):,.0f} lines/s as fast as offered)")


def first_paint() -> float:
    """Seconds from a fresh interpreter's start to the main screen's first frame."""
    code = (
        "import time, psutil, os, asyncio\n"
        "born = psutil.Process(os.getpid()).create_time()\n"
        "import sys; sys.path.insert(0, %r)\n"
        "from bench.tui_log_throughput import IdleSession\n"
        "from tui.app import PairlabApp\n"
        "async def main():\n"
        "    app = PairlabApp(IdleSession(), autostart=False)\n"
        "    async with app.run_test(size=(120, 40)) as pilot:\n"
        "        await pilot._wait_for_screen()\n"
        "        print(time.time() - born)\n"
        "asyncio.run(main())\n"
    ) % str(Path(__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per offered rate")
    parser.add_argument("--rates", default="1000,5000,20000,50000,100000,200000")
    parser.add_argument("--memory-lines", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true",
                        help="seconds, not minutes: idle (the reference) and 20,000 lines/s, 2 s each")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rates, args.memory_lines = 2.0, "0,20000", 100_000
    samples = 1 if args.quick else 3
    paints = sorted(first_paint() for _ in range(samples))
    print(f"first paint: {paints[len(paints) // 2]:.2f} s (median of {samples}; "
          f"{', '.join(f'{p:.2f}' for p in paints)})  on {os.cpu_count()} CPUs\n")
    asyncio.run(run_rates([int(r) for r in args.rates.split(",")], args.seconds))
    asyncio.run(run_memory(args.memory_lines))


if __name__ == "__main__":
    main()
