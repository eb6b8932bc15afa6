"""What a finished run left, read: the evaluator's result file checked, an adopted
repository's summary block, and the message that says why a run crashed."""

from __future__ import annotations

import json
import math
import signal

RESULT_SCHEMA = 1
MAX_RESULT_BYTES = 1 << 20


def check_result(raw: bytes, run_id: str, expected_eval_tokens: int | None,
                 expected_checksum: str | None) -> tuple[dict, str | None]:
    """The evaluator's result file, validated: (metrics, None) or ({}, why it is refused)."""
    if len(raw) > MAX_RESULT_BYTES:
        return {}, "result file is larger than 1 MiB"
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return {}, f"not valid JSON ({exc})"
    if not isinstance(data, dict):
        return {}, "not a JSON object"
    if data.get("schema") != RESULT_SCHEMA:
        return {}, f"schema is {data.get('schema')!r}, expected {RESULT_SCHEMA}"
    if data.get("run_id") != run_id:
        return {}, f"run_id is {data.get('run_id')!r}, expected {run_id!r}"
    error = invalid_val_bpb(data.get("val_bpb"))
    if error:
        return {}, error
    if expected_eval_tokens is not None and data.get("eval_tokens") != expected_eval_tokens:
        return {}, (f"eval_tokens is {data.get('eval_tokens')!r}, "
                    f"expected {expected_eval_tokens}")
    if expected_checksum is not None and data.get("data_checksum") != expected_checksum:
        return {}, "data_checksum does not match the prepared validation data"
    return data, None


def signal_message(signum: int, lines: list[str]) -> str:
    oom = oom_line(lines)
    if oom:
        return f"out of memory: {oom}"
    if signum == signal.SIGKILL:
        return "killed by signal 9 (out of memory?)"
    try:
        return f"killed by signal {signum} ({signal.Signals(signum).name})"
    except ValueError:
        return f"killed by signal {signum}"


def crash_message(name: str, returncode: int, lines: list[str]) -> str:
    for line in reversed(lines):
        if line.startswith("FAIL:"):
            return f"{name} failed: {line[len('FAIL:'):].strip()}"
    oom = oom_line(lines)
    if oom:
        return f"out of memory: {oom}"
    exception = last_exception_line(lines)
    if exception:
        return f"{name} crashed: {exception}"
    if 128 < returncode < 128 + signal.NSIG:   # a wrapper (shell, uv run) reporting a signal
        return signal_message(returncode - 128, lines)
    last = next((line.strip() for line in reversed(lines) if line.strip()), "")
    return f"{name} exited with code {returncode}" + (f": {last}" if last else "")


def oom_line(lines: list[str]) -> str | None:
    for line in reversed(lines):
        if "out of memory" in line.lower() or "OutOfMemoryError" in line:
            return line.strip()
    return None


def last_exception_line(lines: list[str]) -> str | None:
    """The `Type: message` line that ends the last Python traceback in the lines."""
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    if not starts:
        return None
    after = lines[starts[-1] + 1:]
    candidates = [line for line in after if line.strip() and not line.startswith((" ", "\t"))]
    return candidates[-1].strip() if candidates else None


def summary_block(lines: list[str]) -> dict:
    """The `key: value` lines after the last `---` line (autoresearch's summary)."""
    starts = [i for i, line in enumerate(lines) if line.strip() == "---"]
    if not starts:
        return {}
    summary = {}
    for line in lines[starts[-1] + 1:]:
        key, sep, value = line.partition(":")
        if not sep:
            continue
        try:
            summary[key.strip()] = float(value.strip())
        except ValueError:
            continue
    return summary


def invalid_val_bpb(value) -> str | None:
    if value is None:
        return "no val_bpb"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"val_bpb is not a number: {value!r}"
    if not math.isfinite(value) or value <= 0:
        return f"val_bpb is not a finite positive number: {value!r}"
    return None


def number(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return 0.0
    return float(value)
