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
