"""
The evaluator: val_bpb of a handed-over model, in a process that runs no code of train.py.

    python -S -P -m nanochat.evaluate --model DIR --result FILE

The engine starts it after the training process group is gone, outside the workspace, with
the validation data in PAIRLAB_DATA_DIR (the training process never learns that path) and
the result path on its command line. It loads the graph train.py's hand-off exported (ATen
operations only; see harness.handoff) and its tensors, and refuses a graph that could tell
one call from another (state it writes, memory it did not write, random draws): what it
scores is a function of the tokens. It computes bits per byte with its own log-softmax over
the fixed validation rows, checking on scored batches picked at random that the logits it
scores do not look ahead: the model gets tokens and returns logits, and never sees a target.
"""

import argparse
import itertools
import json
import math
import operator
import os
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch.export.graph_signature import InputKind, OutputKind

from nanochat import harness
from nanochat.harness import (DEVICE, EXIT_SETUP_ERROR, EXIT_TRAINING_FAILED, MAX_SEQ_LEN,
                              PROGRAM_FILE, TENSORS_FILE, fail)
from nanochat.prepare import dataset_checksum

# How many tokens are scored is part of the metric. A CPU evaluates 128k tokens in a few
# seconds; on a GPU, autoresearch's 40 x 2^19.
EVAL_TOKENS = harness._env_number("PAIRLAB_EVAL_TOKENS", int,
                                  131072 if harness.CPU else 40 * 524288)
EXIT_REFUSED = 4  # the model is not one the evaluator will score (looks ahead, odd graph)
# Scored batches whose tails are rewritten: picked, and cut, at random in every evaluation.
CAUSAL_BATCHES = 2
# Logits of the same prefix come out bitwise equal on CPU and CUDA kernels alike; the
# tolerance only absorbs a kernel that reduces in another order. A model that looks ahead
# by even a little moves them by far more.
CAUSAL_ATOL = 1e-3

# The graph may hold ATen operations, minus the few that touch files, and these Python ones.
_ALLOWED_PYTHON_TARGETS = {operator.getitem}
_ALLOWED_HIGHER_ORDER = {"wrap_with_autocast", "wrap_with_set_grad_enabled"}
_FORBIDDEN_ATEN = {"from_file", "_print", "save"}
# Memory they hand out is not written: it holds what an earlier call left there.
_UNINITIALIZED = {"empty", "empty_like", "empty_strided", "empty_permuted", "new_empty",
                  "new_empty_strided"}
_INPUT_KINDS = {InputKind.USER_INPUT, InputKind.PARAMETER, InputKind.BUFFER,
                InputKind.CONSTANT_TENSOR}
STATELESS = "the model must keep no state from one call to the next"


# ---------------------------------------------------------------------------
# Loading the handed-over model
# ---------------------------------------------------------------------------

def _refuse(message):
    fail(f"model refused: {message}", EXIT_REFUSED)


def load_program(directory):
    """The exported program, from JSON and plain tensors: nothing is unpickled but tensors."""
    from torch._export.serde.serialize import SerializedArtifact, deserialize
    directory = Path(directory)
    for name in (PROGRAM_FILE, TENSORS_FILE):
        if not (directory / name).is_file():
            fail(f"no {name} in {directory}: train.py did not reach the protected hand-off",
                 EXIT_TRAINING_FAILED)
    try:
        tensors = torch.load(directory / TENSORS_FILE, map_location=DEVICE, weights_only=True)
    except Exception as error:  # weights_only refuses any object that is not a tensor
        _refuse(f"{TENSORS_FILE} holds something other than tensors ({_first_line(error)})")
    if not isinstance(tensors, dict) or set(tensors) != {"state_dict", "constants",
                                                          "example_inputs"}:
        _refuse(f"{TENSORS_FILE} is not the hand-off's state_dict, constants, example_inputs")
    artifact = SerializedArtifact((directory / PROGRAM_FILE).read_bytes(),
                                  tensors["state_dict"], tensors["constants"],
                                  tensors["example_inputs"])
    try:
        program = deserialize(artifact)
    except Exception as error:
        _refuse(f"the graph in {PROGRAM_FILE} could not be loaded ({_first_line(error)})")
    check_operations(program)
    return program


def _first_line(error):
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def check_operations(program):
    """The graph is a function of its tokens: its signature takes tensors and returns the
    logits only (no buffer or input it updates), and every call in it (and its subgraphs) is
    an ATen operation that touches no file, writes into no tensor in place, reads no memory
    it did not write and draws no random number, or one of a few structural ones. So no
    call can tell it is the evaluator's first, or one of the causality check's."""
    signature = program.graph_signature
    outputs = {spec.kind for spec in signature.output_specs} - {OutputKind.USER_OUTPUT}
    if outputs:
        _refuse(f"the graph also returns {_kinds(outputs)}, which the evaluator would carry "
                f"into the next call: {STATELESS}")
    inputs = {spec.kind for spec in signature.input_specs} - _INPUT_KINDS
    if inputs:
        _refuse(f"the graph takes {_kinds(inputs)} inputs: it may take tensors only")
    for module in program.graph_module.modules():
        graph = getattr(module, "graph", None)
        for node in graph.nodes if graph is not None else ():
            if node.op != "call_function":
                continue
            target = node.target
            if isinstance(target, torch._ops.OpOverload):
                if target.namespace != "aten" or target._opname in _FORBIDDEN_ATEN:
                    _refuse(f"the graph calls {target}, which the evaluator does not run")
                if target._schema.is_mutable:
                    _refuse(f"the graph calls {target}, which writes into a tensor in place: "
                            f"{STATELESS}")
                if target._opname in _UNINITIALIZED:
                    _refuse(f"the graph calls {target}, whose memory holds what an earlier call "
                            f"left there: {STATELESS}")
                if torch.Tag.nondeterministic_seeded in target.tags and _draws(node):
                    _refuse(f"the graph calls {target}, which draws random numbers: the logits "
                            "must depend on the tokens only")
            elif isinstance(target, torch._ops.HigherOrderOperator):
                if target.name() not in _ALLOWED_HIGHER_ORDER:
                    _refuse(f"the graph calls {target.name()}, which the evaluator does not run")
            elif target not in _ALLOWED_PYTHON_TARGETS:
                _refuse(f"the graph calls {getattr(target, '__name__', target)!r}, which the "
                        "evaluator does not run")


def _kinds(kinds):
    return " and ".join(sorted(kind.name.lower().replace("_", " ") for kind in kinds))


def _draws(node):
    """Whether a call of an operation that may draw random numbers does: attention draws
    only with a dropout probability, which an exported forward has at 0."""
    if node.target is not torch.ops.aten.scaled_dot_product_attention.default:
        return True
    dropout_p = node.kwargs.get("dropout_p", node.args[4] if len(node.args) > 4 else 0.0)
    return dropout_p != 0.0


def input_shape(program):
    """(batch, seq_len) of the one token input the forward was exported for."""
    args, kwargs = program.example_inputs
    if len(args) != 1 or kwargs or args[0].dim() != 2 or args[0].dtype != torch.long:
        _refuse("the forward must take one [batch, seq_len] tensor of token ids; it was "
                f"exported for {len(args)} positional and {len(kwargs)} keyword inputs")
    batch, seq_len = args[0].shape
    if seq_len != MAX_SEQ_LEN:
        _refuse(f"the forward was exported for rows of {seq_len} tokens; the evaluator "
                f"scores rows of {MAX_SEQ_LEN}")
    return batch, seq_len


# ---------------------------------------------------------------------------
# The fixed validation rows and the metric
# ---------------------------------------------------------------------------

@lru_cache(maxsize=4)
def eval_rows(directory, seq_len, eval_tokens):
    """The fixed validation set: EVAL_TOKENS // seq_len rows packed in file order from the
    start of val.bin (no shuffle, no best fit), so every run scores the same tokens
    whatever its batch size."""
    n_rows = eval_tokens // seq_len
    if n_rows == 0:
        fail(f"EVAL_TOKENS={eval_tokens} is less than one row of {seq_len} tokens",
             EXIT_SETUP_ERROR)
    tokens = harness._tokens(directory, "val")
    rows = harness._pack_rows(tokens, harness._meta(directory)["bos_id"],
                              harness._documents(*harness._document_bounds(directory, "val"),
                                                 seed=None),
                              seq_len + 1, buffer_size=1)
    try:
        return torch.stack([torch.from_numpy(row) for row, _ in itertools.islice(rows, n_rows)])
    except harness._OutOfData:
        fail(f"val.bin at {directory} holds {len(tokens):,} tokens, too few for "
             f"{n_rows} rows of {seq_len} (EVAL_TOKENS={eval_tokens:,}): prepare a larger "
             "validation split or lower PAIRLAB_EVAL_TOKENS", EXIT_SETUP_ERROR)


@dataclass(frozen=True)
class Evaluation:
    val_bpb: float
    tokens: int  # target tokens scored (specials excluded)
    bytes: int  # UTF-8 bytes of those tokens


def _batches(rows, batch_size):
    """(inputs, targets, real rows) of batch_size rows each; the last batch is padded with
    copies of its first row, so the graph always sees the shape it was exported for."""
    for first in range(0, len(rows), batch_size):
        batch = rows[first:first + batch_size]
        real = len(batch)
        if real < batch_size:
            batch = torch.cat([batch, batch[:1].expand(batch_size - real, -1)])
        batch = batch.to(DEVICE)
        yield batch[:, :-1], batch[:, 1:], real


def _logits(forward, inputs, vocab_size):
    logits = forward(inputs)
    if not isinstance(logits, torch.Tensor) or logits.shape[:2] != inputs.shape \
            or logits.dim() != 3 or logits.size(-1) < vocab_size:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        _refuse(f"the forward must return logits of shape [batch, seq_len, >= {vocab_size}] "
                f"for input {tuple(inputs.shape)}; it returned {shape}")
    return logits


@torch.no_grad()
def evaluate(forward, batch_size, directory, seq_len=None, eval_tokens=None, generator=None):
    """Bits per byte on the fixed validation rows: summed nats over target tokens divided by
    ln 2 times their bytes, from forward(tokens) -> logits. Specials (0 bytes) count in
    neither sum, so the metric does not depend on the vocabulary. With a generator, the
    causality check runs on CAUSAL_BATCHES scored batches it picks, against the very logits
    that are scored."""
    directory = str(directory)
    rows = eval_rows(directory, seq_len or MAX_SEQ_LEN, eval_tokens or EVAL_TOKENS)
    token_bytes = harness._token_bytes(directory).to(DEVICE)
    vocab_size = len(token_bytes)
    n_batches = -(-len(rows) // batch_size)
    checked = (set(torch.randperm(n_batches, generator=generator)[:CAUSAL_BATCHES].tolist())
               if generator is not None else set())
    # Tails for the check: other validation rows, so the change looks like text.
    others, _, _ = next(_batches(rows[-batch_size:].flip(0), batch_size))
    total_nats = torch.zeros((), dtype=torch.float64, device=DEVICE)
    total_bytes = torch.zeros((), dtype=torch.int64, device=DEVICE)
    total_tokens = torch.zeros((), dtype=torch.int64, device=DEVICE)
    for index, (inputs, targets, real) in enumerate(_batches(rows, batch_size)):
        logits = _logits(forward, inputs, vocab_size)
        if index in checked:
            check_causal(forward, inputs, logits, others, real, vocab_size, generator)
        logits = logits[:real, :, :vocab_size].float()
        targets = targets[:real]
        nats = -logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1).double()
        nbytes = token_bytes[targets]
        scored = nbytes > 0
        total_nats += torch.where(scored, nats, 0.0).sum()
        total_bytes += nbytes.sum()
        total_tokens += scored.sum()
    return Evaluation(val_bpb=total_nats.item() / (math.log(2) * total_bytes.item()),
                      tokens=int(total_tokens.item()), bytes=int(total_bytes.item()))


@torch.no_grad()
def check_causal(forward, inputs, logits, others, real, vocab_size, generator):
    """Refuses a model whose logits at position t change when only tokens after t change,
    or whose logits for one row change when only the other rows of the batch change (the
    next row is the continuation of the text). logits: forward(inputs), as scored. Each row
    gets its own random cut t (the last position among them); the tokens after it are
    replaced by those of `others`, rows of validation text."""
    batch_size, seq_len = inputs.shape
    cuts = torch.randint(0, seq_len - 1, (batch_size,), generator=generator)
    cuts[0] = seq_len - 2
    after = (torch.arange(seq_len)[None, :] > cuts[:, None]).to(DEVICE)
    original = logits.float()
    rewritten = _logits(forward, torch.where(after, others, inputs), vocab_size).float()
    for row in range(real):
        cut = int(cuts[row])
        moved = (original[row, :cut + 1] - rewritten[row, :cut + 1]).abs().amax(-1)
        leaks = torch.nonzero(moved > CAUSAL_ATOL).flatten()
        if len(leaks):
            position = int(leaks[0])
            _refuse(f"the model looks ahead: its logits at position {position} changed "
                    f"(by {float(moved[position]):.3g}) when only tokens after position "
                    f"{cut} changed; a language model may use only the tokens up to the "
                    "one it predicts from")
    kept = int(torch.randint(0, real, (), generator=generator))
    alone = others.clone()
    alone[kept] = inputs[kept]
    moved = (original[kept] - _logits(forward, alone, vocab_size)[kept].float()).abs().max()
    if moved > CAUSAL_ATOL:
        _refuse(f"the model mixes the rows of a batch: the logits of row {kept} changed "
                f"(by {float(moved):.3g}) when only the other rows changed; each row "
                "must be predicted from its own tokens")


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------

def _write_json(path, payload):
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--model", required=True, help="the hand-off's folder")
    parser.add_argument("--result", required=True, help="where to write the result JSON")
    args = parser.parse_args(argv)
    started = time.monotonic()
    directory = str(harness.data_dir())
    program = load_program(args.model)
    batch_size, seq_len = input_shape(program)
    forward = program.module()
    # Fresh batches and cuts every evaluation, from the OS: no model can know them in advance.
    generator = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little"))
    evaluation = evaluate(forward, batch_size, directory, seq_len, EVAL_TOKENS, generator)
    if not math.isfinite(evaluation.val_bpb):
        fail(f"val_bpb is {evaluation.val_bpb}", EXIT_TRAINING_FAILED)
    result = {
        "schema": 1,
        "run_id": harness.RUN_ID,
        "val_bpb": evaluation.val_bpb,
        "eval_tokens": evaluation.tokens,
        "eval_bytes": evaluation.bytes,
        "data_checksum": dataset_checksum(Path(directory)),
        "num_params": sum(t.numel() for t in program.state_dict.values()),
        "device": DEVICE,
        "seq_len": seq_len,
        "eval_seconds": time.monotonic() - started,
    }
    _write_json(args.result, result)
    print(f"val_bpb:          {evaluation.val_bpb:.6f}   (nanochat.evaluate: {evaluation.tokens:,} "
          f"tokens, {result['eval_seconds']:.1f}s)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
