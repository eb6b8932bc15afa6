"""`pairlab doctor`: can this machine train this workspace, answered in seconds.

Each check gives one line: ok, degraded (it works, with less than it could: why), failed
(with the whole error) or skipped (why). The pipeline check trains the workspace's own
train.py for a few steps on a tiny config, through the real runner: confined where the
kernel allows it, the protected hand-off, and the evaluator. A new workspace's first start
runs that same check before its baseline (engine/loop/workers.py), so a broken pipeline is
reported in seconds, not after a whole training budget.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from engine.base.constants import parse_constants, rewrite
from engine.base.records import RunStatus
from engine.run import confine

# train.py's constants for a model that trains a step in milliseconds on any device.
TINY_CONSTANTS = {"DEPTH": 1, "ASPECT_RATIO": 64, "HEAD_DIM": 64, "TOTAL_BATCH_SIZE": 256,
                  "DEVICE_BATCH_SIZE": 4}
# Run settings for it: no compile (its own check), short rows, a small fixed eval set.
TINY_ENV = {"PAIRLAB_COMPILE": "0", "PAIRLAB_SEQ_LEN": "64", "PAIRLAB_EVAL_TOKENS": "4096"}
PIPELINE_STEPS = 3
PIPELINE_TIMEOUT_S = 120.0
PROBE_TIMEOUT_S = 120.0


class Status(str, Enum):
    OK = "ok"
    DEGRADED = "degraded"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str

    @property
    def failed(self) -> bool:
        return self.status is Status.FAILED

    def line(self, width: int = 12) -> str:
        return f"{self.status.value:9} {self.name:{width}} {self.detail}"


@dataclass(frozen=True)
class Target:
    """What a run trains: the workspace's files and how it runs them."""

    root: Path                      # a workspace, or the folder holding the template
    files: tuple[str, ...] = ("train.py",)
    command: tuple[str, ...] = ()   # () : the engine's python on train.py
    metric_source: str = "result_file"
    device: str | None = None
    data_dir: Path | None = None
    env: tuple[tuple[str, str], ...] = ()   # the runs' extra variables

    @property
    def run_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.env)
        if self.device:
            env["PAIRLAB_DEVICE"] = self.device
        return env


# ---------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------

def data_check(data_dir: Path | None) -> Check:
    from engine.run.data import data_problem
    directory = resolved_data_dir(data_dir)
    problem = data_problem(directory)
    if problem:
        return Check("data", Status.FAILED,
                     f"{problem}: run `pairlab prepare` (or `pairlab prepare --force` to rebuild)")
    meta = json.loads((directory / "meta.json").read_text())
    return Check("data", Status.OK,
                 f"{directory}: {int(meta['train_tokens']):,} training and "
                 f"{int(meta['val_tokens']):,} validation tokens, vocabulary "
                 f"{int(meta['vocab_size']):,}, checksum matches")


def resolved_data_dir(data_dir: Path | None) -> Path:
    """The dataset runs read: the given one, PAIRLAB_DATA_DIR, else the default prepared one."""
    from nanochat import prepare
    if data_dir:
        return Path(data_dir)
    explicit = os.environ.get("PAIRLAB_DATA_DIR", "").strip()
    return Path(explicit).expanduser() if explicit else prepare.default_dataset_dir()


def confinement_check() -> Check:
    """Landlock and a private network namespace, tried on a real process."""
    why_not = confine.probe()
    if why_not:
        return Check("confinement", Status.DEGRADED,
                     f"runs go unconfined ({why_not}); the table marks them [unconfined]")
    import py_landlock
    abi = py_landlock.get_abi_version()
    with tempfile.TemporaryDirectory(prefix="pairlab-doctor-") as scratch:
        policy = confine.Policy(read=tuple(confine.python_paths()), write=(scratch,))
        code = ("import socket, sys\n"
                "try:\n"
                "    socket.create_connection(('1.1.1.1', 53), timeout=1)\n"
                "except OSError:\n"
                "    sys.exit(0)\n"
                "sys.exit(9)\n")
        proc = subprocess.run(confine.launcher(policy, [sys.executable, "-S", "-c", code]),
                              capture_output=True, text=True, timeout=60)
    if proc.returncode == 9:
        return Check("confinement", Status.FAILED,
                     "a confined process reached the network: the network namespace did not "
                     "take effect")
    if proc.returncode != 0:
        return Check("confinement", Status.FAILED,
                     f"a confined process failed (exit {proc.returncode}): "
                     f"{(proc.stderr or proc.stdout).strip()}")
    return Check("confinement", Status.OK,
                 f"Landlock ABI {abi}: reads and writes limited, no network (private namespace)")


def probe(env: dict[str, str], compile_enabled: bool) -> dict:
    """What train.py's harness picks under env (device, precision) and whether
    torch.compile works, from a fresh interpreter, as the training process would see it."""
    command = [sys.executable, "-P", "-m", "engine.run.doctor", "--probe"]
    if not compile_enabled:
        command.append("--no-compile")
    from engine.run.evaluation import SOURCE_ROOT
    env = {**env, "PYTHONPATH": os.pathsep.join(
        p for p in (str(SOURCE_ROOT), env.get("PYTHONPATH", "")) if p)}
    try:
        proc = subprocess.run(command, capture_output=True, text=True, env=env,
                              timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"error": f"the probe took more than {PROBE_TIMEOUT_S:g}s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip() or proc.stdout.strip()
                          or f"exit {proc.returncode}")}
    return json.loads(lines[-1])


def _probe_main(compile_enabled: bool) -> None:
    """The probe's own process: one JSON line on stdout."""
    import torch

    from nanochat import harness
    found = {"device": harness.DEVICE, "precision": harness.PRECISION,
             "native_bf16": harness.cpu_has_native_bf16() if harness.CPU else None,
             "torch": torch.__version__,
             "gpu": torch.cuda.get_device_name() if harness.DEVICE == "cuda" else None}
    if compile_enabled:
        started = time.monotonic()
        try:
            def step(x, w):
                return torch.nn.functional.relu(x @ w).square().sum(-1)
            x = torch.randn(16, 32, device=harness.DEVICE)
            w = torch.randn(32, 32, device=harness.DEVICE)
            compiled, eager = torch.compile(step, fullgraph=True, dynamic=False)(x, w), step(x, w)
            # other kernels sum in another order: agreement to float rounding, not bits
            same = torch.allclose(compiled, eager, rtol=1e-3, atol=1e-3)
            found["compile"] = {"ok": bool(same), "seconds": time.monotonic() - started,
                                "error": "" if same else "compiled and eager results differ by "
                                f"{float((compiled - eager).abs().max()):.3g}"}
        except Exception as error:
            found["compile"] = {"ok": False, "seconds": time.monotonic() - started,
                                "error": f"{type(error).__name__}: {error}".strip()}
    print(json.dumps(found))


def device_check(found: dict) -> Check:
    if "error" in found:
        return Check("device", Status.FAILED, f"train.py's harness could not start: "
                                              f"{found['error']}")
    device, precision = found["device"], found["precision"]
    forced = os.environ.get("PAIRLAB_PRECISION", "auto").strip().lower() not in ("", "auto")
    where = f"{device} ({found['gpu']})" if found.get("gpu") else device
    text = f"{where}, {precision} (torch {found['torch']})"
    if device == "cpu":
        native = found.get("native_bf16")
        text += "; this CPU " + ("multiplies bf16 in hardware" if native
                                 else "has no native bf16: bf16 would be emulated")
    text += "; PAIRLAB_PRECISION set" if forced else "; PAIRLAB_PRECISION=bf16|fp32 forces one"
    if device == "cpu" and precision == "bf16" and not found.get("native_bf16"):
        return Check("device", Status.DEGRADED, text + " (emulated bf16 trains slowly)")
    return Check("device", Status.OK, text)


def compile_check(found: dict, compile_enabled: bool) -> Check:
    if not compile_enabled:
        return Check("compile", Status.SKIPPED, "PAIRLAB_COMPILE=0: runs train eagerly")
    if "error" in found:
        return Check("compile", Status.SKIPPED, "the harness could not start (see device)")
    result = found["compile"]
    if not result["ok"]:
        return Check("compile", Status.FAILED,
                     f"torch.compile failed: {result['error']}; PAIRLAB_COMPILE=0 trains "
                     "without it (slower)")
    return Check("compile", Status.OK,
                 f"torch.compile (inductor) compiled and ran a test step in "
                 f"{result['seconds']:.1f}s")


def tiny_source(source: str, device: str) -> str:
    """train.py with TINY_CONSTANTS wherever it has them as literal constants."""
    constants = parse_constants(source, device)
    changes = {name: value for name, value in TINY_CONSTANTS.items() if name in constants}
    return rewrite(source, constants, changes) if changes else source


def pipeline_check(target: Target) -> Check:
    """A few steps of the target's own train.py on a tiny config, through the runner:
    confinement, the protected hand-off and the evaluator."""
    from engine.run.runner import Runner
    if target.metric_source != "result_file":
        return Check("pipeline", Status.SKIPPED,
                     "an adopted repository: its own command and summary line, not the "
                     "hand-off; its first experiment is the check")
    started = time.monotonic()
    device = target.device or ("cuda" if os.path.exists("/dev/nvidiactl") else "cpu")
    with tempfile.TemporaryDirectory(prefix="pairlab-doctor-") as scratch:
        root = Path(scratch) / "ws"
        for name in target.files:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            source = (target.root / name).read_text()
            (root / name).write_text(tiny_source(source, device) if name == "train.py"
                                     else source)
        env = {**dict(target.env), **TINY_ENV, "PAIRLAB_MAX_STEPS": str(PIPELINE_STEPS)}
        runner = Runner(root, "doctor", 5.0, command=list(target.command) or None, env=env,
                        device=target.device, data_dir=resolved_data_dir(target.data_dir),
                        log_path=Path(scratch) / "doctor.log",
                        hard_timeout_s=PIPELINE_TIMEOUT_S, code_files=target.files,
                        cache_dir=Path(scratch) / "cache")
        result = runner.run()
        log = (Path(scratch) / "doctor.log").read_text(errors="replace")
    seconds = time.monotonic() - started
    confined = "unconfined" if runner.unconfined_reason else "confined"
    if result.status is not RunStatus.MEASURED or result.val_bpb is None:
        tail = "\n".join(line for line in log.splitlines()[-25:] if line.strip())
        return Check("pipeline", Status.FAILED,
                     f"train.py (tiny config, {PIPELINE_STEPS} steps, {confined}) did not get "
                     f"a val_bpb: {result.status.value}: {result.message}\n{tail}")
    return Check("pipeline", Status.OK,
                 f"train.py (tiny config, {PIPELINE_STEPS} steps, {confined}) -> hand-off -> "
                 f"evaluator: val_bpb {result.val_bpb:.4f}, in {seconds:.1f}s")


def run_checks(target: Target, on_check=None) -> list[Check]:
    """Every check, the slow ones side by side; on_check(check) as each is known, in order."""
    checks: list[Check] = []

    def report(check: Check) -> None:
        checks.append(check)
        if on_check is not None:
            on_check(check)

    data = data_check(target.data_dir)
    report(data)
    compile_enabled = dict(target.env).get(
        "PAIRLAB_COMPILE", os.environ.get("PAIRLAB_COMPILE", "1")).strip() != "0"
    pipeline: list[Check] = []
    runner_thread = None
    if not data.failed:
        runner_thread = threading.Thread(target=lambda: pipeline.append(pipeline_check(target)),
                                         daemon=True)
        runner_thread.start()
    found = probe(target.run_env, compile_enabled)
    report(device_check(found))
    report(confinement_check())
    report(compile_check(found, compile_enabled))
    if runner_thread is None:
        report(Check("pipeline", Status.SKIPPED, "no training data (see data)"))
    else:
        runner_thread.join()
        report(pipeline[0])
    return checks


def target_of(workspace, settings) -> Target:
    """The doctor's target for a workspace and the session settings it would run with."""
    config = workspace.config
    return Target(root=workspace.root, files=tuple(config.targets),
                  command=tuple(config.run_command or ()), metric_source=config.metric_source,
                  device=settings.device, data_dir=settings.data_dir,
                  env=tuple(sorted(settings.extra_env.items())))


def template_target(device: str | None = None, data_dir: Path | None = None) -> Target:
    """The template a new workspace starts from."""
    import nanochat
    return Target(root=Path(nanochat.__file__).parent, device=device, data_dir=data_dir)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--probe"]:
        _probe_main(compile_enabled="--no-compile" not in sys.argv)
