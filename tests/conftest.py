from pathlib import Path

import pytest

from nanochat import prepare


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory) -> Path:
    """A prepared dataset dir (contracts §1) from the embedded default English corpus: vocab
    512, 1 MB of training text, the full fixed validation split (~230k tokens). About 2 s.

    The pinned archives are fetched once per machine into the real download cache
    ($PAIRLAB_CACHE or ~/.cache/pairlab/downloads); the dataset itself lives in a tmp dir."""
    return prepare.prepare_dataset(
        "default", cache_dir=prepare.resolve_cache_dir(), vocab_size=512, max_bytes=1_000_000,
        out_dir=tmp_path_factory.mktemp("data") / "default")


# ---------------------------------------------------------------------- tiny research loops

# Constants of train.py rewritten for a model that trains in a second or two on the CPU.
TINY_CONSTANTS = {
    "DEPTH": "1",
    "ASPECT_RATIO": "64",
    "HEAD_DIM": "64",
    "TOTAL_BATCH_SIZE": "256",
    "DEVICE_BATCH_SIZE": "4",
}
# Caller-owned run settings: no compile, short sequences, a small fixed eval set.
TINY_ENV = {"PAIRLAB_COMPILE": "0", "PAIRLAB_SEQ_LEN": "64", "PAIRLAB_EVAL_TOKENS": "4096",
            "PAIRLAB_DEVICE": "cpu"}


def tiny_train_py(source: str) -> str:
    """train.py with TINY_CONSTANTS in place of the template's values (comments kept)."""
    import re
    for name, value in TINY_CONSTANTS.items():
        source, count = re.subn(rf"^{name} = [^#\n]*?(\s*#)", rf"{name} = {value}\1", source,
                                count=1, flags=re.M)
        assert count == 1, f"{name} not found in train.py"
    return source


@pytest.fixture
def tiny_workspace(tmp_path):
    """A real workspace (git repo, research branch) whose train.py is the tiny config."""
    from engine import workspace as ws_module
    ws = ws_module.init(tmp_path / "ws", tag="test")
    train = ws.root / "train.py"
    train.write_text(tiny_train_py(train.read_text()))
    ws.commit_change({"train.py": train.read_text()}, "tiny config for tests",
                     parent=ws.head())
    return ws


@pytest.fixture
def tiny_settings(dataset_dir):
    """SessionSettings for fast, deterministic runs: fixed steps, no noise repeats."""
    from engine.session import SessionSettings

    def make(**overrides):
        values = dict(mode="auto", budget_s=5.0, max_steps=6, noise_repeats=0, device="cpu",
                      data_dir=dataset_dir, extra_env=dict(TINY_ENV), hard_timeout_s=120.0)
        values.update(overrides)
        return SessionSettings(**values)
    return make
