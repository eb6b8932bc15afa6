"""Device status: per-GPU utilisation, memory, temperature and power, or CPU and RAM, and
the trainer's own usage. Any reading the monitor could not take shows "n/a"."""

from __future__ import annotations

from textual.content import Content
from textual.widget import Widget
from textual.widgets import Static

from engine.events import DeviceSample, RunStarted
from tui.widgets.panel import Panel

BAR_WIDTH = 10


def _value(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else fmt.format(value)


def _bar(percent: float | None) -> Content:
    if percent is None:
        return Content.styled("·" * BAR_WIDTH, "dim")
    filled = max(0, min(BAR_WIDTH, round(percent / 100 * BAR_WIDTH)))
    colour = "$error" if percent >= 90 else "$warning" if percent >= 70 else "$success"
    return Content.assemble(("█" * filled, colour), ("░" * (BAR_WIDTH - filled), "dim"))


def _gb(mb: float | None) -> str:
    return _value(None if mb is None else mb / 1024, "{:.1f}")


def describe(sample: DeviceSample) -> Content:
    rows: list[Content] = []
    if sample.kind == "gpu":
        for index, gpu in enumerate(sample.devices):
            util = gpu.get("util")
            used, total = gpu.get("mem_used_mb"), gpu.get("mem_total_mb")
            mem_percent = used / total * 100 if used is not None and total else None
            rows.append(Content.assemble(
                (f"GPU{index} ", "bold"), (f"{gpu.get('name') or 'n/a'}\n", "dim"),
                " util ", _bar(util), f" {_value(util, '{:.0f}%'):>4}",
                "  mem ", _bar(mem_percent), f" {_gb(used)}/{_gb(total)} GB",
                f"  {_value(gpu.get('temp_c'), '{:.0f}°C')}",
                f"  {_value(gpu.get('power_w'), '{:.0f} W')}",
            ))
        if not sample.devices:
            rows.append(Content("GPU n/a"))
    if sample.kind != "gpu" or sample.cpu_percent is not None:
        used, total = sample.ram_used_mb, sample.ram_total_mb
        ram_percent = used / total * 100 if used is not None and total else None
        rows.append(Content.assemble(
            ("CPU ", "bold"), _bar(sample.cpu_percent), f" {_value(sample.cpu_percent, '{:.0f}%'):>4}",
            ("  RAM ", "bold"), _bar(ram_percent), f" {_gb(used)}/{_gb(total)} GB",
        ))
    rows.append(Content.assemble(
        ("trainer ", "bold"),
        f"cpu {_value(sample.trainer_cpu_percent, '{:.0f}%')}",
        f"  rss {_value(sample.trainer_rss_mb, '{:.0f} MB')}",
    ))
    return Content("\n").join(rows)


class DevicePanel(Panel):
    TITLE = "device"

    def compose(self):
        yield Static(Content.styled("no reading yet", "dim"), id="device-status")
        yield Static("", id="device-slots")

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#device-status").can_focus = True

    def focus_target(self) -> Widget:
        return self.query_one("#device-status")

    def show(self, sample: DeviceSample) -> None:
        self.query_one("#device-status", Static).update(describe(sample))

    def show_slots(self, runs: dict[int, RunStarted], followed: int) -> None:
        """One line per busy trainer slot (with several): what it trains; ▸ marks the one
        the log panel follows."""
        several = len(runs) > 1 or any(slot > 0 for slot in runs)
        lines = slot_lines(runs, followed) if several else []
        static = self.query_one("#device-slots", Static)
        static.display = bool(lines)
        static.update(Content("\n").join(lines))


def slot_lines(runs: dict[int, RunStarted], followed: int) -> list[Content]:
    lines = []
    for slot, run in sorted(runs.items()):
        what = f"#{run.proposal_id}" if run.proposal_id is not None else run.description
        kind = " speculative" if run.speculative else ""
        lines.append(Content.assemble(("▸ " if slot == followed else "  ", "bold $accent"),
                                      (f"slot {slot} ", "bold"), f"{run.run_id} {what}{kind}"))
    return lines
