"""The prepared dataset a run reads: whole, or what is wrong with it, in words."""

from __future__ import annotations

import json
from pathlib import Path


def data_problem(directory: Path) -> str | None:
    """What is wrong with a prepared dataset dir (contracts §1), in words; None if it is whole.

    Sizes against meta.json first (a truncated file says which), then the checksum prepare
    wrote, which the harness recomputes for every result."""
    from nanochat import prepare
    if not directory.is_dir():
        return f"there is no prepared training data at {directory}"
    names = ("meta.json", "tokenizer.pkl", "token_bytes.npy", "train.bin", "val.bin")
    missing = [name for name in names if not (directory / name).is_file()]
    if missing:
        return f"the training data at {directory} is incomplete: {', '.join(missing)} missing"
    try:
        meta = json.loads((directory / "meta.json").read_text())
        expected = {"train.bin": 2 * int(meta["train_tokens"]),
                    "val.bin": 2 * int(meta["val_tokens"])}
        checksum, version = str(meta["checksum"]), meta.get("format")
    except (ValueError, KeyError, TypeError, OSError) as exc:
        return f"the training data at {directory} has an unreadable meta.json ({exc})"
    if version != prepare.FORMAT:
        return (f"the training data at {directory} has format {version}; this pairlab "
                f"reads format {prepare.FORMAT}")
    for name, size in expected.items():
        actual = (directory / name).stat().st_size
        if actual != size:
            return (f"the training data at {directory} is corrupt: {name} is {actual:,} "
                    f"bytes, meta.json says {size:,} (truncated or overwritten)")
    if prepare.dataset_checksum(directory) != checksum:
        *first, last = prepare.CHECKSUMMED
        return (f"the training data at {directory} is corrupt: {', '.join(first)} or {last} "
                f"changed since it was prepared (checksum mismatch)")
    return None
