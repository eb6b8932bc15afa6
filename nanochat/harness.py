"""
The fixed half of every experiment: run settings, device, training data, the hand-off.

train.py (the file the agent edits) imports this module; the agent never edits it and it
is never copied into a workspace. The training process never sees the validation split:
the hand-off saves the trained model, and nanochat/evaluate.py, a separate process that
runs no code from train.py, computes val_bpb from it. The packing of rows lives here
because the evaluator packs its validation rows the same way.
"""

import bisect
import itertools
import json
import math
import os
import pickle
import resource
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from nanochat import PROGRAM_FILE, REPORT_FILE, TENSORS_FILE
from nanochat.prepare import FORMAT

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


def cpu_has_native_bf16(cpuinfo=None):
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX); without it, torch
    emulates bf16 matmuls at a fraction of the fp32 speed. cpuinfo: /proc/cpuinfo's text."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:  # not Linux: Apple silicon runs bf16 natively, other hosts rarely
            return sys.platform == "darwin"
    flags = cpuinfo.split()
    return "avx512_bf16" in flags or "amx_bf16" in flags


PRECISIONS = ("auto", "bf16", "fp32")


def auto_precision(device, native_bf16):
    """bf16 on accelerators and on CPUs that multiply bf16 in hardware; fp32 where bf16 would
    be emulated (on a Cascade Lake ~3x slower matmuls, training ~2x slower)."""
    return "bf16" if device != "cpu" or native_bf16 else "fp32"


def pick_precision(requested, device, native_bf16):
    """PAIRLAB_PRECISION: auto (the rule above), bf16 or fp32. Forcing one runs that path on
    any machine: bf16 without native support is slow, but correct."""
    requested = (requested or "auto").strip().lower()
    if requested not in PRECISIONS:
        fail(f"PAIRLAB_PRECISION={requested!r}: expected one of {', '.join(PRECISIONS)}",
             EXIT_SETUP_ERROR)
    return auto_precision(device, native_bf16) if requested == "auto" else requested


DEVICE = _pick_device()
CPU = DEVICE == "cpu"
PRECISION = pick_precision(os.environ.get("PAIRLAB_PRECISION"), DEVICE,
                           CPU and cpu_has_native_bf16())
COMPUTE_DTYPE = torch.bfloat16 if PRECISION == "bf16" else torch.float32
TIME_BUDGET = _env_number("PAIRLAB_TIME_BUDGET", float, 300.0)  # training seconds
MAX_STEPS = _env_number("PAIRLAB_MAX_STEPS", int, None)  # fixed step count, or None: by time
COMPILE = os.environ.get("PAIRLAB_COMPILE", "1").strip() != "0"
RUN_ID = os.environ.get("PAIRLAB_RUN_ID", "manual")
# Where the hand-off saves the trained model: a folder the engine chose (see handoff()).
MODEL_DIR = Path(os.environ.get("PAIRLAB_MODEL", "model"))
# The context length is part of the metric: the evaluator scores rows of this many tokens.
MAX_SEQ_LEN = _env_number("PAIRLAB_SEQ_LEN", int, 256 if CPU else 2048)


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


# Datasheet dense bf16 peaks (no sparsity), so GPU MFU compares with autoresearch's
# figures. Most specific names first: an "H100 PCIe" is not an SXM H100.
DATASHEET_BF16_FLOPS = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("GH200", 989.5e12),
                        ("H200", 989.5e12), ("H100", 989.5e12), ("A100", 312e12),
                        ("L40S", 362e12), ("L4", 121e12))


def datasheet_peak(device_name, dtype):
    """The datasheet bf16 peak of a GPU by its CUDA name, None when it is not known."""
    if dtype != torch.bfloat16:
        return None
    return next((flops for model, flops in DATASHEET_BF16_FLOPS if model in device_name), None)


@lru_cache(maxsize=None)
def peak_flops(dtype=torch.bfloat16):
    """Peak matmul FLOP/s of DEVICE in dtype: the datasheet bf16 figure for known GPUs, else
    measured here on a square matmul for a fraction of a second."""
    known = datasheet_peak(torch.cuda.get_device_name(), dtype) if DEVICE == "cuda" else None
    return known or measure_matmul_flops(dtype, size=1024 if CPU else 8192, seconds=0.3)


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
# The protected hand-off: save the trained model, print the summary, exit
# ---------------------------------------------------------------------------
# The model leaves this process as a graph of ATen operations from tokens to logits
# (torch.export) and its tensors: nanochat/evaluate.py loads them without running any of
# train.py's Python. Neither file is a pickle of objects: the graph is JSON and the tensors
# are read back with torch.load(weights_only=True), which builds tensors and nothing else.
# (torch.export.save's archive is not used: torch.export.load unpickles with
# weights_only=False, so a crafted archive would run code in the evaluator.)


def _unwrap(model):
    """The module itself: torch.compile's wrapper keeps it in _orig_mod."""
    return getattr(model, "_orig_mod", model)


class _UnderAutocast(torch.nn.Module):
    """The forward under the autocast it was trained with, inside the graph: export records
    a wrap_with_autocast node, so the evaluator runs the casts that training ran. (A bare
    forward exported inside an autocast context keeps the dtypes autocast chose but not its
    casts: such a graph fails on its own tensors, "Expected: BFloat16, Got: float".)"""

    def __init__(self, module, device_type, dtype):
        super().__init__()
        self.module = module
        self.device_type = device_type
        self.dtype = dtype

    def forward(self, tokens):
        with torch.autocast(device_type=self.device_type, dtype=self.dtype):
            return self.module(tokens)


def export_model(model, *, autocast, batch_size, seq_len=None):
    """torch.export of the forward from a [batch_size, seq_len] token batch to logits, with
    train.py's autocast (a torch.autocast, or a null context for none) in the graph."""
    from torch.export import export
    module = _unwrap(model).eval()
    if isinstance(autocast, torch.autocast) and autocast._enabled:
        module = _UnderAutocast(module, autocast.device, autocast.fast_dtype)
    tokens = torch.zeros((batch_size, seq_len or MAX_SEQ_LEN), dtype=torch.long, device=DEVICE)
    with torch.no_grad():
        return export(module, (tokens,))


def save_model(program, directory):
    from torch._export.serde.serialize import serialize
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    artifact = serialize(program)
    tensors = {"state_dict": dict(program.state_dict), "constants": dict(program.constants),
               "example_inputs": program.example_inputs}
    (directory / PROGRAM_FILE).write_bytes(artifact.exported_program)
    torch.save(tensors, directory / TENSORS_FILE)


def handoff(model, *, autocast, batch_size, num_steps, total_tokens, training_seconds,
            flops_per_token, depth):
    """Saves the trained model to MODEL_DIR for the evaluator, prints autoresearch's summary
    block (without val_bpb, which only the evaluator knows) and ends the process.

    Ending it here means no code of train.py runs after the model is saved: the engine
    starts the evaluator once this process group is gone."""
    try:
        program = export_model(model, autocast=autocast, batch_size=batch_size)
    except Exception as error:
        fail(f"the model could not be exported for the evaluator ({type(error).__name__}: "
             f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}); the "
             "forward from tokens to logits must be traceable by torch.export",
             EXIT_TRAINING_FAILED)
    save_model(program, MODEL_DIR)
    compute_dtype = getattr(autocast, "fast_dtype", torch.float32)  # nullcontext: fp32
    # under the untimed warm-up steps nothing was timed: no MFU rather than an absurd one
    mfu = (100 * flops_per_token * total_tokens / training_seconds / peak_flops(compute_dtype)
           if training_seconds > 0 else 0.0)
    reported = {
        "training_seconds": training_seconds,
        "peak_memory_mb": peak_memory_mb(),
        "num_steps": num_steps,
        "total_tokens": total_tokens,
        "mfu_percent": mfu,
        "depth": depth,
    }
    (MODEL_DIR / REPORT_FILE).write_text(json.dumps(reported, indent=2) + "\n")
    print("---")
    print(f"training_seconds: {training_seconds:.1f}")
    print(f"peak_vram_mb:     {reported['peak_memory_mb']:.1f}")
    print(f"mfu_percent:      {mfu:.2f}")
    print(f"total_tokens_M:   {total_tokens / 1e6:.1f}")
    print(f"num_steps:        {num_steps}")
    print(f"depth:            {depth}")
    print("model handed to the evaluator")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
