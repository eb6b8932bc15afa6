"""
The fixed half of every experiment: run settings, device, data, evaluation, result.

train.py (the file the agent edits) imports this module; the agent never edits it and it
is never copied into a workspace. It owns everything the metric depends on: the dataset,
the packing of validation rows, bits-per-byte, and the result file the engine reads.
"""

import bisect
import itertools
import json
import math
import os
import pickle
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from nanochat.prepare import FORMAT, dataset_checksum

_PROCESS_STARTED = time.time()

# The lines that fence train.py's hand-off to finish(); engine/patch.py refuses patches inside.
PROTECTED_BEGIN = (
    "# ---- pairlab: protected begin "
    "(the harness evaluates the model; patches may not change this block) ----"
)
PROTECTED_END = "# ---- pairlab: protected end ----"

EXIT_SETUP_ERROR = 2  # no data, bad settings: nothing was trained
EXIT_TRAINING_FAILED = 3  # loss went nan/inf or exploded


def fail(message, exit_code):
    """One `FAIL:` line on stderr for the runner, then exit without a traceback."""
    print(f"\nFAIL: {message}", file=sys.stderr, flush=True)
    raise SystemExit(exit_code)


# ---------------------------------------------------------------------------
# Run settings (from the environment the engine's runner sets; contracts §2)
# ---------------------------------------------------------------------------

def _env_number(name, parse, default):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = parse(raw)
    except ValueError:
        fail(f"{name}={raw!r} is not a valid {parse.__name__}", EXIT_SETUP_ERROR)
    if value <= 0:
        fail(f"{name}={raw!r} must be positive", EXIT_SETUP_ERROR)
    return value


def _pick_device():
    requested = os.environ.get("PAIRLAB_DEVICE", "").strip().lower()
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
        "cpu": True,
    }
    if requested:
        if requested not in available:
            fail(f"PAIRLAB_DEVICE={requested!r}: expected cpu, cuda or mps", EXIT_SETUP_ERROR)
        if not available[requested]:
            fail(f"PAIRLAB_DEVICE={requested} but no {requested} device is available",
                 EXIT_SETUP_ERROR)
        return requested
    return next(name for name, ok in available.items() if ok)


DEVICE = _pick_device()
CPU = DEVICE == "cpu"
TIME_BUDGET = _env_number("PAIRLAB_TIME_BUDGET", float, 300.0)  # training seconds
MAX_STEPS = _env_number("PAIRLAB_MAX_STEPS", int, None)  # fixed step count, or None: by time
COMPILE = os.environ.get("PAIRLAB_COMPILE", "1").strip() != "0"
RUN_ID = os.environ.get("PAIRLAB_RUN_ID", "manual")
RESULT_PATH = Path(os.environ.get("PAIRLAB_RESULT", "result.json"))
# Context length and evaluation size are part of the metric, so they live here, per device.
# A CPU evaluates 128k tokens in a few seconds; on a GPU, autoresearch's 40 x 2^19.
MAX_SEQ_LEN = _env_number("PAIRLAB_SEQ_LEN", int, 256 if CPU else 2048)
EVAL_TOKENS = _env_number("PAIRLAB_EVAL_TOKENS", int, 131072 if CPU else 40 * 524288)


def progress(step, training_seconds):
    """Fraction of the run done: by steps when PAIRLAB_MAX_STEPS is set, else by time."""
    if MAX_STEPS is not None:
        return min(step / MAX_STEPS, 1.0)
    return min(training_seconds / TIME_BUDGET, 1.0)


# ---------------------------------------------------------------------------
# Dataset and tokenizer (written by nanochat/prepare.py; contracts §1)
# ---------------------------------------------------------------------------

def data_dir():
    explicit = os.environ.get("PAIRLAB_DATA_DIR", "").strip()
    if explicit:
        return Path(explicit).expanduser()
    cache = os.environ.get("PAIRLAB_CACHE", "").strip() or "~/.cache/pairlab"
    return Path(cache).expanduser() / "datasets" / "default"


def _data_file(directory, name):
    path = Path(directory) / name
    if not path.is_file():
        fail(f"no prepared data at {directory} ({name} is missing): run `pairlab prepare`",
             EXIT_SETUP_ERROR)
    return path


@lru_cache(maxsize=None)
def _meta(directory):
    meta = json.loads(_data_file(directory, "meta.json").read_text())
    if meta.get("format") != FORMAT:
        fail(f"dataset at {directory} has format {meta.get('format')}, this harness reads "
             f"format {FORMAT}: run `pairlab prepare` again", EXIT_SETUP_ERROR)
    return meta


def load_meta():
    return _meta(str(data_dir()))


def load_tokenizer():
    """The tiktoken.Encoding the data was tokenized with (one special token, <|bos|>)."""
    with open(_data_file(data_dir(), "tokenizer.pkl"), "rb") as f:
        return pickle.load(f)


@lru_cache(maxsize=None)
def _token_bytes(directory):
    return torch.from_numpy(np.load(_data_file(directory, "token_bytes.npy")).astype(np.int64))


@lru_cache(maxsize=None)
def _tokens(directory, split):
    return np.memmap(_data_file(directory, f"{split}.bin"), dtype=np.uint16, mode="r")


# ---------------------------------------------------------------------------
# BOS-aligned packing
# ---------------------------------------------------------------------------
# Every row starts with BOS, as autoresearch's loader. Pieces go into rows best-fit from a
# buffer sorted by length; when none fits, the oldest piece is cropped to fill the row and
# its remainder, behind a fresh BOS, keeps its place in line to start a later row.
# autoresearch crops the shortest and throws the remainder away: harmless for web documents
# at 2048 tokens, but at the CPU's 256 it would discard most of a long-document corpus, and
# with few documents "the shortest" would fix the data order whatever the seed.

@dataclass(frozen=True)
class _Piece:
    start: int  # index into the token stream
    end: int
    needs_bos: bool  # a cropped remainder: BOS is written in front of it

    def __len__(self):
        return self.end - self.start + self.needs_bos


@lru_cache(maxsize=None)
def _document_bounds(directory, split):
    """(starts, ends) of every document: each starts at a BOS."""
    tokens = _tokens(directory, split)
    starts = np.flatnonzero(tokens == _meta(directory)["bos_id"])
    if len(starts) == 0 or starts[0] != 0:
        fail(f"{split}.bin at {directory} does not start with BOS: run `pairlab prepare` again",
             EXIT_SETUP_ERROR)
    return starts.tolist(), np.append(starts[1:], len(tokens)).tolist()


def _documents(starts, ends, seed):
    """Pieces covering whole documents: in file order once (seed None), else shuffled per
    epoch forever. Yields (piece, epoch)."""
    if seed is None:
        for start, end in zip(starts, ends):
            yield _Piece(start, end, False), 1
        return
    rng = np.random.default_rng(seed)
    for epoch in itertools.count(1):
        for i in rng.permutation(len(starts)).tolist():
            yield _Piece(starts[i], ends[i], False), epoch


class _OutOfData(Exception):
    pass


def _pack_rows(tokens, bos_id, pieces, row_len, buffer_size):
    """Yields (row, epoch): int64 arrays of row_len tokens, each starting with BOS."""
    buffer = []  # sorted (length, arrival, piece): best fit by bisection, ties by arrival
    arrival = itertools.count()
    epoch = 1
    while True:
        row = np.empty(row_len, dtype=np.int64)
        pos = 0
        while pos < row_len:
            while len(buffer) < buffer_size:
                try:
                    piece, epoch = next(pieces)
                except StopIteration:
                    break
                bisect.insort(buffer, (len(piece), next(arrival), piece))
            if not buffer:
                raise _OutOfData
            room = row_len - pos
            best = bisect.bisect_right(buffer, (room, math.inf)) - 1
            whole = best >= 0
            if not whole:
                best = min(range(len(buffer)), key=lambda i: buffer[i][1])
            _, arrived, piece = buffer.pop(best)
            take = len(piece) if whole else room
            if piece.needs_bos:
                row[pos] = bos_id
            body = take - piece.needs_bos
            row[pos + piece.needs_bos:pos + take] = tokens[piece.start:piece.start + body]
            pos += take
            if not whole and piece.start + body < piece.end:
                rest = _Piece(piece.start + body, piece.end, True)
                bisect.insort(buffer, (len(rest), arrived, rest))
        yield row, epoch


def make_dataloader(batch_size, seed, seq_len=None):
    """Infinite training batches (inputs, targets, epoch) on DEVICE, shapes [batch_size,
    seq_len]. The same seed gives the same batches."""
    seq_len = seq_len or MAX_SEQ_LEN
    directory = str(data_dir())
    tokens = _tokens(directory, "train")
    starts, ends = _document_bounds(directory, "train")
    # Best fit among up to 1000 documents, as autoresearch; never more than one epoch's worth,
    # so a small corpus does not hold the same document twice.
    rows = _pack_rows(tokens, _meta(directory)["bos_id"], _documents(starts, ends, seed),
                      seq_len + 1, buffer_size=min(1000, len(starts)))
    pin = DEVICE == "cuda"
    while True:
        # A fresh buffer per batch: the previous one may still be in an async copy or in use.
        batch = torch.empty((batch_size, seq_len + 1), dtype=torch.long, pin_memory=pin)
        for i in range(batch_size):
            row, epoch = next(rows)
            batch[i] = torch.from_numpy(row)
        batch_on_device = batch.to(DEVICE, non_blocking=pin)
        yield batch_on_device[:, :-1], batch_on_device[:, 1:], epoch


# ---------------------------------------------------------------------------
# Evaluation: the fixed metric
# ---------------------------------------------------------------------------

@lru_cache(maxsize=4)
def _eval_rows(directory, seq_len, eval_tokens):
    """The fixed validation set: EVAL_TOKENS // seq_len rows packed in file order from the
    start of val.bin (no shuffle, no best fit), so every run scores the same tokens
    whatever its batch size."""
    n_rows = eval_tokens // seq_len
    if n_rows == 0:
        fail(f"EVAL_TOKENS={eval_tokens} is less than one row of {seq_len} tokens",
             EXIT_SETUP_ERROR)
    tokens = _tokens(directory, "val")
    rows = _pack_rows(tokens, _meta(directory)["bos_id"],
                      _documents(*_document_bounds(directory, "val"), seed=None), seq_len + 1,
                      buffer_size=1)
    try:
        return torch.from_numpy(np.stack([row for row, _ in itertools.islice(rows, n_rows)]))
    except _OutOfData:
        fail(f"val.bin at {directory} holds {len(tokens):,} tokens, too few for "
             f"{n_rows} rows of {seq_len} (EVAL_TOKENS={eval_tokens:,}): prepare a larger "
             "validation split or lower PAIRLAB_EVAL_TOKENS", EXIT_SETUP_ERROR)


@dataclass(frozen=True)
class Evaluation:
    val_bpb: float
    tokens: int  # target tokens scored (specials excluded)
    bytes: int  # UTF-8 bytes of those tokens


@torch.no_grad()
def evaluate(model, batch_size):
    """Bits per byte on the fixed validation rows: summed nats over target tokens divided by
    ln 2 times their bytes. Specials (0 bytes) count in neither sum, so the metric does not
    depend on the vocabulary. The last batch is padded with ignored rows (target -1) so a
    compiled model sees one shape."""
    directory = str(data_dir())
    rows = _eval_rows(directory, MAX_SEQ_LEN, EVAL_TOKENS)
    token_bytes = _token_bytes(directory).to(DEVICE)
    total_nats = torch.zeros((), dtype=torch.float64, device=DEVICE)
    total_bytes = torch.zeros((), dtype=torch.int64, device=DEVICE)
    total_tokens = torch.zeros((), dtype=torch.int64, device=DEVICE)
    for first in range(0, len(rows), batch_size):
        batch = rows[first:first + batch_size].to(DEVICE)
        inputs, targets = batch[:, :-1], batch[:, 1:]
        padding = batch_size - len(batch)
        if padding:
            inputs = torch.cat([inputs, inputs[:1].expand(padding, -1)])
            targets = torch.cat([targets, torch.full_like(targets[:1], -1).expand(padding, -1)])
        losses = model(inputs, targets, reduction="none").reshape(-1).double()
        flat_targets = targets.reshape(-1)
        nbytes = torch.where(flat_targets >= 0, token_bytes[flat_targets.clamp(min=0)], 0)
        scored = nbytes > 0
        total_nats += torch.where(scored, losses, 0.0).sum()
        total_bytes += nbytes.sum()
        total_tokens += scored.sum()
    return Evaluation(
        val_bpb=total_nats.item() / (math.log(2) * total_bytes.item()),
        tokens=int(total_tokens.item()),
        bytes=int(total_bytes.item()),
    )


def evaluate_bpb(model, batch_size):
    return evaluate(model, batch_size).val_bpb


def data_checksum(directory):
    """prepare.py's meta.json checksum, computed from the files themselves: a meta.json
    copied next to other validation data must not vouch for it."""
    return dataset_checksum(Path(directory))


# ---------------------------------------------------------------------------
# Health and efficiency
# ---------------------------------------------------------------------------

MAX_SANE_LOSS = 100.0  # a cross-entropy this high means the run has diverged


def check_loss(loss, step):
    """Fails the run fast (exit 3) on a nan/inf or exploding training loss."""
    if not math.isfinite(loss):
        fail(f"loss is {loss} at step {step}", EXIT_TRAINING_FAILED)
    if loss > MAX_SANE_LOSS:
        fail(f"loss exploded to {loss:.1f} (> {MAX_SANE_LOSS:.0f}) at step {step}",
             EXIT_TRAINING_FAILED)


# Datasheet dense bf16 peaks, so GPU MFU compares with autoresearch's figures.
_DATASHEET_BF16_FLOPS = {"H100": 989.5e12, "H200": 989.5e12, "A100": 312e12}


@lru_cache(maxsize=None)
def peak_flops(dtype=torch.bfloat16):
    """Peak matmul FLOP/s of DEVICE in dtype: the datasheet bf16 figure for known GPUs, else
    measured here on a square matmul for a fraction of a second."""
    if DEVICE == "cuda" and dtype == torch.bfloat16:
        name = torch.cuda.get_device_name()
        for model_name, flops in _DATASHEET_BF16_FLOPS.items():
            if model_name in name:
                return flops
    return measure_matmul_flops(dtype, size=1024 if CPU else 8192, seconds=0.3)


def cpu_has_native_bf16():
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX); without it, torch
    emulates bf16 matmuls at a fraction of the fp32 speed."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:  # not Linux: Apple silicon runs bf16 natively, other hosts rarely
        return sys.platform == "darwin"
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _synchronize():
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    elif DEVICE == "mps":
        torch.mps.synchronize()


def measure_matmul_flops(dtype, size, seconds):
    a = torch.randn(size, size, device=DEVICE, dtype=dtype)
    b = torch.randn(size, size, device=DEVICE, dtype=dtype)
    a @ b  # warm-up: first call picks kernels and allocates
    _synchronize()
    calls = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        calls += 1
        if calls % 8 == 0:
            _synchronize()
    _synchronize()
    return 2 * size**3 * calls / (time.perf_counter() - started)


def peak_memory_mb():
    """CUDA: max allocated by torch. Elsewhere: the process's peak resident set."""
    if DEVICE == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes vs KiB


# ---------------------------------------------------------------------------
# The protected hand-off: evaluate, write the result, print the summary
# ---------------------------------------------------------------------------

def _write_json_atomically(path, payload):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def finish(model, *, autocast, batch_size, num_steps, total_tokens, training_seconds,
           flops_per_token, depth):
    """Evaluates the trained model, prints autoresearch's summary block, writes the result
    JSON that the engine reads (the only source of val_bpb) and ends the process.

    Ending it here is what keeps the result honest: code after the protected block, an
    atexit hook or a finally clause in train.py never runs after the result is written,
    so none of it can rewrite the file."""
    directory = str(data_dir())
    with autocast:
        evaluation = evaluate(model, batch_size)
    if not math.isfinite(evaluation.val_bpb):
        fail(f"val_bpb is {evaluation.val_bpb} after {num_steps} steps", EXIT_TRAINING_FAILED)
    compute_dtype = getattr(autocast, "fast_dtype", torch.float32)  # nullcontext: fp32
    # under the untimed warm-up steps nothing was timed: no MFU rather than an absurd one
    mfu = (100 * flops_per_token * total_tokens / training_seconds / peak_flops(compute_dtype)
           if training_seconds > 0 else 0.0)
    result = {
        "schema": 1,
        "run_id": RUN_ID,
        "val_bpb": evaluation.val_bpb,
        "eval_tokens": evaluation.tokens,
        "eval_bytes": evaluation.bytes,
        "data_checksum": data_checksum(directory),
        "training_seconds": training_seconds,
        "total_seconds": time.time() - _PROCESS_STARTED,
        "peak_memory_mb": peak_memory_mb(),
        "num_steps": num_steps,
        "total_tokens": total_tokens,
        "num_params": sum(p.numel() for p in model.parameters()),
        "mfu_percent": mfu,
        "depth": depth,
        "device": DEVICE,
        "seq_len": MAX_SEQ_LEN,
    }
    print("---")
    print(f"val_bpb:          {result['val_bpb']:.6f}")
    print(f"training_seconds: {result['training_seconds']:.1f}")
    print(f"total_seconds:    {result['total_seconds']:.1f}")
    print(f"peak_vram_mb:     {result['peak_memory_mb']:.1f}")
    print(f"mfu_percent:      {result['mfu_percent']:.2f}")
    print(f"total_tokens_M:   {total_tokens / 1e6:.1f}")
    print(f"num_steps:        {num_steps}")
    print(f"num_params_M:     {result['num_params'] / 1e6:.1f}")
    print(f"depth:            {depth}")
    _write_json_atomically(RESULT_PATH, result)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
