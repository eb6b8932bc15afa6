"""Each commit's own torch.compile cache, seeded from the one pairlab prepared.

A run's inductor (and triton) cache holds compiled code that later runs load and execute.
Agent code runs with write access to its cache, so a cache shared by every run would let a
discarded experiment plant compiled code that another commit's run executes: power over a
model other than the one it hands over. So each commit gets its own cache folder, keyed by
the content of the files the agent edits (the same code, the same key), and shared only by
runs of that code (the best's re-runs, the baseline's noise repeats):

    <workspace>/.pairlab/cache/compile/<key>/     TORCHINDUCTOR_CACHE_DIR, TRITON_CACHE_DIR
    <dataset>/compile_seed/                       written by `pairlab prepare` (trusted)

A new folder starts as a copy of the seed, the compile of the shipped template written by
pairlab's own process, so a fresh workspace's baseline (and any experiment that leaves the
graph alone) starts warm. A copy, not hard links: the run may write into any file of its
folder, and a hard-linked file is the seed's and every other copy's too. A run holds a
shared lock on its folder while it trains; only the least recently used folders that no run
holds are removed, beyond KEEP_FOLDERS.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

SEED_FOLDER = "compile_seed"     # in the prepared dataset's folder
FOLDER = "compile"               # in the workspace's .pairlab/cache
KEEP_FOLDERS = 16                # the best, candidates being confirmed, a few recent ones
KEY_CHARS = 16
CACHE_VARIABLES = {"TORCHINDUCTOR_CACHE_DIR": "inductor", "TRITON_CACHE_DIR": "triton"}
SEED_STEPS = 3                   # step 0 compiles; the next ones catch any recompile
SEED_TIMEOUT_S = 1800.0
STAMP_FILE = "seed.json"


def code_key(root: Path, files: Sequence[str]) -> str:
    """A digest of the code a run executes: the named files' paths and bytes (a missing
    file counts as missing, so it keys differently from an empty one)."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0")
        try:
            digest.update(b"1" + (Path(root) / name).read_bytes() + b"\0")
        except OSError:
            digest.update(b"0\0")
    return digest.hexdigest()[:KEY_CHARS]


def cache_env(folder: Path) -> dict[str, str]:
    return {name: str(Path(folder) / sub) for name, sub in CACHE_VARIABLES.items()}


def seed_of(data_dir: Path | None) -> Path | None:
    """The prepared seed next to a dataset, when `pairlab prepare` wrote one."""
    if data_dir is None:
        return None
    seed = Path(data_dir) / SEED_FOLDER
    return seed if seed.is_dir() else None


class CommitCache:
    """The compile cache of one commit's runs. `open()` makes it (from the seed) and holds
    it; `close()` lets it go. The folder's path is `path`."""

    def __init__(self, cache_root: Path, key: str, seed: Path | None):
        self.folders = Path(cache_root) / FOLDER
        self.path = self.folders / key
        self.seed = seed
        self._held: int | None = None

    def env(self) -> dict[str, str]:
        return cache_env(self.path)

    def open(self) -> Path:
        self.folders.mkdir(parents=True, exist_ok=True)
        while True:
            if not self.path.is_dir():
                self._make()
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
            fcntl.flock(fd, fcntl.LOCK_SH)
            try:   # a pruner may have taken it away between the check and the lock
                if os.path.samestat(os.fstat(fd), os.stat(self.path)):
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        self._held = fd
        os.utime(self.path)        # the recency pruning goes by
        prune(self.folders, keep=KEEP_FOLDERS)
        return self.path

    def close(self) -> None:
        if self._held is not None:
            os.close(self._held)
            self._held = None

    def _make(self) -> None:
        """The seed's copy, swapped into place whole; a race with another run of the same
        code leaves one of the two copies."""
        scratch = Path(tempfile.mkdtemp(dir=self.folders, prefix=f".{self.path.name}.new-"))
        try:
            if self.seed is not None:
                shutil.copytree(self.seed, scratch, dirs_exist_ok=True, symlinks=True)
            try:
                os.rename(scratch, self.path)
            except OSError as error:
                if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def prune(folders: Path, keep: int) -> list[Path]:
    """Remove the least recently used commit folders beyond `keep` that no run holds;
    returns the removed ones."""
    entries = []
    for path in folders.iterdir():
        if path.name.startswith("."):
            continue
        try:
            entries.append((path.stat().st_mtime, path))
        except FileNotFoundError:
            continue
    removed = []
    for _, path in sorted(entries, reverse=True)[keep:]:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue             # a run trains with it
        retired = folders / f".{path.name}.old-{os.getpid()}"
        try:
            os.rename(path, retired)
        except OSError:
            retired = None
        os.close(fd)
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)
            removed.append(path)
    return removed


def seed_stamp(device: str | None) -> dict:
    """What a seed was compiled from: the shipped train.py, torch, the device asked for."""
    import nanochat
    template = Path(nanochat.__file__).resolve().parent / "train.py"
    return {"template": hashlib.sha256(template.read_bytes()).hexdigest(),
            "torch": importlib.metadata.version("torch"), "device": device or ""}


def write_seed(data_dir: Path, device: str | None = None, force: bool = False,
               steps: int = SEED_STEPS) -> bool:
    """Compile the shipped train.py on the dataset into data_dir's seed, unless the seed
    there is already of this train.py and torch (force: anyway). Its first `steps` steps
    run in pairlab's own process (no agent code), as a workspace runs it (`python
    train.py`), and the finished seed is swapped in whole. Returns whether it compiled;
    raises RuntimeError with the run's last lines when that failed."""
    import nanochat
    data_dir = Path(data_dir)
    seed, stamp = data_dir / SEED_FOLDER, seed_stamp(device)
    try:
        if not force and json.loads((seed / STAMP_FILE).read_text()) == stamp:
            return False
    except (OSError, ValueError):
        pass
    with tempfile.TemporaryDirectory(dir=data_dir, prefix=f".{SEED_FOLDER}.new-") as scratch:
        work, fresh = Path(scratch) / "work", Path(scratch) / SEED_FOLDER
        work.mkdir()
        fresh.mkdir()
        shutil.copyfile(Path(nanochat.__file__).resolve().parent / "train.py",
                        work / "train.py")
        env = {**os.environ, **cache_env(fresh), "PAIRLAB_DATA_DIR": str(data_dir),
               "PAIRLAB_MAX_STEPS": str(steps), "PAIRLAB_MODEL": str(Path(scratch) / "model"),
               "PAIRLAB_RUN_ID": "compile-seed", "PYTHONUNBUFFERED": "1"}
        if device:
            env["PAIRLAB_DEVICE"] = device
        done = subprocess.run([sys.executable, "train.py"], cwd=work, env=env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=SEED_TIMEOUT_S)
        if done.returncode != 0:
            tail = done.stdout.decode("utf-8", errors="replace").strip().splitlines()[-5:]
            raise RuntimeError(f"compiling the shipped train.py failed (exit "
                               f"{done.returncode}): " + " | ".join(tail))
        (fresh / STAMP_FILE).write_text(json.dumps(stamp) + "\n")
        if seed.exists():
            os.rename(seed, Path(scratch) / "retired")
        os.rename(fresh, seed)
    return True
