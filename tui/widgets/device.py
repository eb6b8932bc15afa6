"""Device status: per-GPU utilisation, memory, temperature and power, or CPU and RAM, and
the trainer's own usage. Any reading the monitor could not take shows "n/a"."""

from __future__ import annotations

from textual.content import Content
from textual.widget import Widget
from textual.widgets import Static

from engine.base.events import DeviceSample, RunStarted
from tui.widgets.panel import Panel

BAR_WIDTH = 10
CELL_GAP = "  "


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


def reading_rows(sample: DeviceSample) -> list[list[Content]]:
    """The readings, a row of cells per device (then the trainer's own usage). A cell is one
    reading with its label and unit: lines break between cells, never inside one."""
    rows: list[list[Content]] = []
    if sample.kind == "gpu":
        for index, gpu in enumerate(sample.devices):
            util = gpu.get("util")
            used, total = gpu.get("mem_used_mb"), gpu.get("mem_total_mb")
            mem_percent = used / total * 100 if used is not None and total else None
            rows.append([
                Content.assemble((f"GPU{index} ", "bold"), (gpu.get("name") or "n/a", "dim")),
                Content.assemble("util ", _bar(util), f" {_value(util, '{:.0f}%'):>4}"),
                Content.assemble("mem ", _bar(mem_percent), f" {_gb(used)}/{_gb(total)} GB"),
                Content(_value(gpu.get("temp_c"), "{:.0f}°C")),
                Content(_value(gpu.get("power_w"), "{:.0f} W")),
            ])
        if not sample.devices:
            rows.append([Content("GPU n/a")])
    if sample.kind != "gpu" or sample.cpu_percent is not None:
        used, total = sample.ram_used_mb, sample.ram_total_mb
        ram_percent = used / total * 100 if used is not None and total else None
        rows.append([
            Content.assemble(("CPU ", "bold"), _bar(sample.cpu_percent),
                             f" {_value(sample.cpu_percent, '{:.0f}%'):>4}"),
            Content.assemble(("RAM ", "bold"), _bar(ram_percent),
                             f" {_gb(used)}/{_gb(total)} GB"),
        ])
    rows.append([
        Content.assemble(("trainer ", "bold"),
                         f"cpu {_value(sample.trainer_cpu_percent, '{:.0f}%')}"),
        Content(f"rss {_value(sample.trainer_rss_mb, '{:.0f} MB')}"),
    ])
    return rows


def fit_cells(cells: list[Content], width: int) -> list[Content]:
    """The cells on as few lines of `width` as they fit, CELL_GAP apart; a line that goes
    on is indented by one column."""
    lines: list[list[Content]] = []
    used = 0
    for cell in cells:
        if lines and used + len(CELL_GAP) + cell.cell_length <= width:
            lines[-1] += [Content(CELL_GAP), cell]
            used += len(CELL_GAP) + cell.cell_length
        else:
            indent = " " if lines else ""
            lines.append([Content(indent), cell])
            used = len(indent) + cell.cell_length
    return [Content.assemble(*line) for line in lines]


def describe(sample: DeviceSample, width: int = 200) -> Content:
    """The readings laid out for `width` columns."""
    return Content("\n").join(line for row in reading_rows(sample)
                              for line in fit_cells(row, width))


class DevicePanel(Panel):
    TITLE = "device"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.sample: DeviceSample | None = None      # the latest reading, laid out on resize

    def compose(self):
        yield Static(Content.styled("no reading yet", "dim"), id="device-status")
        yield Static("", id="device-slots")

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#device-status").can_focus = True

    def focus_target(self) -> Widget:
        return self.query_one("#device-status")

    def show(self, sample: DeviceSample) -> None:
        self.sample = sample
        self._draw()

    def on_resize(self) -> None:
        self._draw()

    def _draw(self) -> None:
        width = self.content_size.width
        if self.sample is not None and width:
            self.query_one("#device-status", Static).update(describe(self.sample, width))

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
