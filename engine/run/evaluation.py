"""The run's folders, the training process's reach, and the evaluator that scores its model.

A run of a pairlab train.py ends at the protected hand-off, which saves the trained model
into the run's writable folder and exits. Once that process group is gone the runner
copies the model into a private folder outside the workspace and starts the evaluator
(`python -m nanochat.evaluate`) there: a process of its own (engine/run/evaluator_processes.py)
that imports nothing from the workspace, reads the validation split the training process
was never told about, and writes its result into that private folder, a path train.py
never learns.

    .pairlab/runs/<id>/
        data/     the training split: hard links (or symlinks) to everything but val.bin
        train/    the training process's only writable folder: TMPDIR, model/ (the hand-off)
        result.json   the evaluator's result, copied here for the record
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import site
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nanochat
from engine.run.compile_cache import CACHE_VARIABLES
from engine.run import evaluator_processes
from engine.run.confine import Policy, python_paths
from engine.run.process import signal_group
from nanochat import PROGRAM_FILE, REPORT_FILE

# What train.py needs of a prepared dataset; val.bin is the evaluator's alone.
TRAINING_FILES = ("meta.json", "tokenizer.pkl", "token_bytes.npy", "train.bin")
MODEL_FOLDER = "model"
MAX_REPORTED_BYTES = 64 * 1024
# train.py's own figures that are kept, as figures it reported: they decide nothing.
REPORTED_KEYS = ("training_seconds", "peak_memory_mb", "num_steps", "total_tokens",
                 "mfu_percent", "depth")
EVALUATION_TIMEOUT_S = 900.0
EXIT_EVALUATOR_TIMEOUT = 124
EXIT_NOT_STARTED = 127
HARNESS_ROOT = Path(nanochat.__file__).resolve().parent          # what train.py imports
SOURCE_ROOT = HARNESS_ROOT.parent                                # holds nanochat/ and engine/


@dataclass(frozen=True)
class RunFolders:
    run_dir: Path
    data: Path          # the training split's view (PAIRLAB_DATA_DIR of the training process)
    writable: Path      # TMPDIR and everything else the training process may write
    model: Path         # PAIRLAB_MODEL: where the hand-off saves the model

    @classmethod
    def of(cls, run_dir: Path) -> "RunFolders":
        run_dir = Path(run_dir)
        writable = run_dir / "train"
        return cls(run_dir, run_dir / "data", writable, writable / MODEL_FOLDER)


def prepare_folders(folders: RunFolders, data_dir: Path | None) -> list[Path]:
    """Fresh data/ and train/ folders (a stale model must never count); data/ gets the
    training files of data_dir. Returns the files behind symlinks, which the training
    process must be allowed to read where they are."""
    for folder in (folders.data, folders.writable):
        shutil.rmtree(folder, ignore_errors=True)
    folders.writable.mkdir(parents=True)
    if data_dir is None:
        return []
    folders.data.mkdir(parents=True)
    linked = []
    for name in TRAINING_FILES:
        source = Path(data_dir) / name
        if not source.exists():
            continue       # the harness says which file is missing, and what to run
        try:
            os.link(source, folders.data / name)
        except OSError:    # another filesystem: a symlink (its target is still not val.bin)
            os.symlink(source.resolve(), folders.data / name)
            linked.append(source.resolve())
    return linked


def training_policy(workspace_root: Path, folders: RunFolders, linked: list[Path],
                    compile_cache: Path) -> Policy:
    """Reads: the workspace (or the slot's worktree it trains in), the run's data/ view, the
    Python environment, the harness package (and the system, the devices, see
    engine.run.confine): not the engine's own folder, nor anything else on its sys.path.
    Writes: the run's train/ folder and its commit's compile cache (no other commit's)."""
    reads = {str(Path(workspace_root).resolve()), str(folders.data.resolve()), str(HARNESS_ROOT),
             *python_paths(), *(str(path) for path in linked)}
    return Policy(read=tuple(sorted(reads)),
                  write=(str(folders.writable.resolve()), str(Path(compile_cache).resolve())))


def exposed_validation(policy: Policy, data_dir: Path | None) -> str | None:
    """Why a run confined by `policy` could read the validation split of data_dir (which
    folder it may read holds it); None when it cannot."""
    if data_dir is None:
        return None
    validation = Path(data_dir) / "val.bin"
    folder = policy.reaching(validation)
    if folder is None:
        return None
    return (f"the validation split {validation} lies inside {folder}, which the confined "
            "training process may read: keep the data cache (PAIRLAB_CACHE, or the data dir "
            "you gave) outside the workspace, the Python environment and the system's folders")


def handed_over(folders: RunFolders) -> bool:
    return (folders.model / PROGRAM_FILE).is_file()


def read_reported(model_dir: Path) -> dict:
    """The figures train.py reported about its run (reported.json), numbers only."""
    try:
        with open(Path(model_dir) / REPORT_FILE, "rb") as f:
            data = json.loads(f.read(MAX_REPORTED_BYTES))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {key: data[key] for key in REPORTED_KEYS
            if isinstance(data.get(key), (int, float)) and not isinstance(data[key], bool)
            and math.isfinite(data[key])}


def evaluator_env(base: dict[str, str], data_dir: Path | None) -> dict[str, str]:
    """The engine's run settings, with the full dataset; PYTHONPATH names only the harness
    and the environment's packages (the evaluator runs with -S -P: no .pth file, no cwd);
    no compile cache, which the training process could write."""
    env = {k: v for k, v in base.items()
           if k not in ("PAIRLAB_MODEL", "PAIRLAB_DATA_DIR", "PYTHONPATH", "TMPDIR",
                        *CACHE_VARIABLES)}
    if data_dir is not None:
        env["PAIRLAB_DATA_DIR"] = str(data_dir)
    env["PYTHONPATH"] = os.pathsep.join([str(SOURCE_ROOT), *site.getsitepackages()])
    # As train.py does: OpenMP threads that sleep rather than spin between operations. With
    # the cores shared, the same model's evaluation took 162 s instead of 262 s, same val_bpb.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


@dataclass
class EvaluatorRun:
    returncode: int
    lines: list[str]        # what it printed
    result: bytes | None    # its result file, when it wrote one
    seconds: float


def run_evaluator(model_dir: Path, env: dict[str, str], on_start=None,
                  timeout_s: float = EVALUATION_TIMEOUT_S) -> EvaluatorRun:
    """Copy the handed-over model into a private folder and score it there. on_start(proc)
    lets the runner kill it like the training run (proc.pid is its process group)."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pairlab-eval-") as private:
        model_copy = Path(private) / MODEL_FOLDER
        result_path = Path(private) / "result.json"
        output_path = Path(private) / "output.txt"
        try:   # a copy: a process that kept the model files open cannot change what is scored
            shutil.copytree(model_dir, model_copy, symlinks=False)
        except (OSError, shutil.Error):
            model_copy.mkdir()   # the evaluator says what is missing
        try:
            proc = evaluator_processes.start(model_copy, result_path, output_path,
                                             Path(private), env, timeout_s)
        except OSError as error:
            return EvaluatorRun(EXIT_NOT_STARTED, [f"FAIL: could not start the evaluator: "
                                                   f"{error.strerror or error}"], None,
                                time.monotonic() - started)
        if on_start is not None:
            on_start(proc)
        returncode = proc.wait(max(0.0, timeout_s - (time.monotonic() - started)))
        timed_out = returncode is None
        if timed_out:
            signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
            returncode = EXIT_EVALUATOR_TIMEOUT
        out = output_path.read_bytes() if output_path.is_file() else b""
        if timed_out:
            out += f"\nFAIL: the evaluator took more than {timeout_s:g}s\n".encode()
        result = result_path.read_bytes() if result_path.is_file() else None
    text = out.decode("utf-8", errors="replace")
    return EvaluatorRun(returncode, text.splitlines(), result, time.monotonic() - started)
