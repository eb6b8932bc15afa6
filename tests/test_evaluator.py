"""The evaluator: the exported model scores as it did in process, and models or files that
would forge the metric are refused with a specific message.

The hand-off and the evaluator are the real ones (harness.save_model, nanochat.evaluate
in a subprocess through engine.run.evaluation); the models are small torch modules, and one
is train.py's own GPT after a few steps of real training.
"""

from __future__ import annotations

import gc
import io
import json
import os
import pickle
import re
import runpy
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

from engine.run.evaluation import evaluator_env, run_evaluator
from nanochat import evaluate, harness
from tests.test_training import TINY, write_train_py

SEQ_LEN = 32
EVAL_ENV = {"PAIRLAB_DEVICE": "cpu", "PAIRLAB_SEQ_LEN": str(SEQ_LEN),
            "PAIRLAB_EVAL_TOKENS": "2048", "PAIRLAB_RUN_ID": "eval-test"}


def vocab_of(dataset_dir) -> int:
    return json.loads((dataset_dir / "meta.json").read_text())["vocab_size"]


class Bigram(torch.nn.Module):
    """Logits from the current token only: causal by construction."""

    def __init__(self, vocab_size):
        super().__init__()
        torch.manual_seed(0)
        self.table = torch.nn.Parameter(torch.randn(vocab_size, vocab_size))

    def forward(self, idx):
        return self.table[idx]


class PeeksAtTheNextToken(Bigram):
    """Logits at t come from token t+1: the answer, from the future."""

    def forward(self, idx):
        return 10 * torch.nn.functional.one_hot(torch.roll(idx, -1, dims=1),
                                                self.table.size(0)).float()


def hand_over(module, directory, batch_size=4):
    program = harness.export_model(module, autocast=nullcontext(), batch_size=batch_size,
                                   seq_len=SEQ_LEN)
    harness.save_model(program, directory)
    return directory


def evaluator(model_dir, dataset_dir):
    env = evaluator_env({**os.environ, **EVAL_ENV}, dataset_dir)
    return run_evaluator(model_dir, env)


def checked_evaluation(forward, dataset_dir, generator):
    """The evaluation with its causality check, in this process."""
    return evaluate.evaluate(forward, 4, dataset_dir, SEQ_LEN, 2048, generator)


def fail_line(run) -> str:
    return next(line for line in reversed(run.lines) if line.startswith("FAIL:"))


# ---- what the evaluator computes -------------------------------------------------------------

# How far the evaluator's val_bpb of the exported model may be from the in-process one. The
# graph runs the same kernels, with train.py's autocast recorded in it: what is left is a
# kernel that reduces in another order, one ulp of the compute dtype on a logit.
SAME_SCORE_TOLERANCE = {"fp32": 1e-5, "bf16": 1e-3}


def test_exported_gpt_scores_as_in_process(dataset_dir, tmp_path, monkeypatch, precision):
    # train.py's own GPT, trained a few steps in this process; the hand-off is caught. Under
    # bf16 its embedding tables are bf16 and the forward runs under autocast: exported as a
    # bare forward inside the autocast context, that graph failed in the evaluator with
    # "Tensor dtype mismatch! Expected: BFloat16, Got: float" (issue 18).
    script = write_train_py(tmp_path, **TINY)
    monkeypatch.setenv("PAIRLAB_DATA_DIR", str(dataset_dir))
    for name, value in {"MAX_SEQ_LEN": SEQ_LEN, "COMPILE": False, "MAX_STEPS": 3,
                        "PRECISION": precision,
                        "COMPUTE_DTYPE": {"bf16": torch.bfloat16, "fp32": torch.float32}[
                            precision]}.items():
        monkeypatch.setattr(harness, name, value)
    monkeypatch.setattr(evaluate, "MAX_SEQ_LEN", SEQ_LEN)
    caught = {}

    def catch(model, *, autocast, batch_size, **_):
        caught.update(model=model, autocast=autocast, batch_size=batch_size)
        raise SystemExit(0)

    monkeypatch.setattr(harness, "handoff", catch)
    try:
        with pytest.raises(SystemExit):
            runpy.run_path(str(script), run_name="__main__")
    finally:
        gc.unfreeze()    # train.py froze and disabled the collector of this process
        gc.enable()
    model, autocast, batch_size = caught["model"], caught["autocast"], caught["batch_size"]
    expected_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    assert model.transformer.wte.weight.dtype == expected_dtype

    def in_process(idx):
        with autocast:
            return model(idx)

    def old_harness_losses(idx, targets):     # what the in-process harness used to score
        with autocast:
            return model(idx, targets, reduction="none")

    reference = evaluate.evaluate(in_process, batch_size, dataset_dir, SEQ_LEN, 2048)
    program = harness.export_model(model, autocast=autocast, batch_size=batch_size,
                                   seq_len=SEQ_LEN)
    harness.save_model(program, tmp_path / "model")
    loaded = evaluate.load_program(tmp_path / "model")
    exported = evaluate.evaluate(loaded.module(), batch_size, dataset_dir, SEQ_LEN, 2048)
    assert exported.tokens == reference.tokens and exported.bytes == reference.bytes
    assert exported.val_bpb == pytest.approx(reference.val_bpb,
                                             abs=SAME_SCORE_TOLERANCE[precision])

    rows = evaluate.eval_rows(str(dataset_dir), SEQ_LEN, 2048)[:batch_size]
    inputs, targets = rows[:, :-1], rows[:, 1:]
    own = -torch.log_softmax(in_process(inputs).float(), -1).gather(-1, targets[..., None])
    assert torch.allclose(own.flatten(), old_harness_losses(inputs, targets).flatten(),
                          atol=1e-5)


@pytest.mark.e2e
def test_evaluator_process_scores_a_handed_over_model(dataset_dir, tmp_path):
    vocab = vocab_of(dataset_dir)
    model = Bigram(vocab)
    run = evaluator(hand_over(model, tmp_path / "model"), dataset_dir)
    assert run.returncode == 0, run.lines
    result = json.loads(run.result)
    expected = evaluate.evaluate(model, 4, dataset_dir, SEQ_LEN, 2048)
    assert result["val_bpb"] == pytest.approx(expected.val_bpb, rel=1e-6)
    assert result["eval_tokens"] == expected.tokens and result["num_params"] == vocab * vocab
    assert result["run_id"] == "eval-test" and result["seq_len"] == SEQ_LEN


# ---- models and files that are refused -------------------------------------------------------

@pytest.mark.e2e
def test_a_model_that_looks_ahead_is_refused_naming_the_position(dataset_dir, tmp_path):
    run = evaluator(hand_over(PeeksAtTheNextToken(vocab_of(dataset_dir)), tmp_path / "m"),
                    dataset_dir)
    assert run.returncode == evaluate.EXIT_REFUSED and run.result is None
    found = re.fullmatch(r"FAIL: model refused: the model looks ahead: its logits at position "
                         r"(\d+) changed \(by [\d.e+-]+\) when only tokens after position (\d+) "
                         r"changed; a language model may use only the tokens up to the one it "
                         r"predicts from", fail_line(run))
    assert found, fail_line(run)
    position, cut = map(int, found.groups())
    assert position == cut and 0 <= cut < SEQ_LEN - 1    # it reads t+1: the cut shows it


def test_a_model_that_looks_ahead_only_at_the_last_position_is_refused(dataset_dir):
    vocab = vocab_of(dataset_dir)

    class PeeksAtTheEnd(Bigram):
        def forward(self, idx):
            logits = self.table[idx]
            return torch.cat([logits[:, :-2], logits[:, -1:] + self.table[idx[:, -1:]],
                              logits[:, -1:]], dim=1)

    generator = torch.Generator().manual_seed(1)
    with pytest.raises(SystemExit) as refused:
        checked_evaluation(PeeksAtTheEnd(vocab), dataset_dir, generator)
    assert refused.value.code == evaluate.EXIT_REFUSED
    checked_evaluation(Bigram(vocab), dataset_dir, generator)   # a causal one passes


def test_a_model_that_reads_the_next_row_of_the_batch_is_refused(dataset_dir, capsys):
    # The next row is the continuation of the text: its tokens are this row's future.
    vocab = vocab_of(dataset_dir)

    class ReadsTheNextRow(Bigram):
        def forward(self, idx):    # the second token of the next row, at every position
            return self.table[idx] + self.table[torch.roll(idx[:, 1:2], -1, dims=0)]

    with pytest.raises(SystemExit) as refused:
        checked_evaluation(ReadsTheNextRow(vocab), dataset_dir, torch.Generator().manual_seed(2))
    assert refused.value.code == evaluate.EXIT_REFUSED
    assert re.fullmatch(r"FAIL: model refused: the model mixes the rows of a batch: the logits "
                        r"of row \d changed \(by [\d.e+-]+\) when only the other rows "
                        r"changed; each row must be predicted from its own tokens",
                        capsys.readouterr().err.strip())


def test_a_model_causal_on_the_first_batch_only_is_refused(dataset_dir):
    # Before, the check rewrote the first batch only, whose rows every evaluation starts
    # with: a model could recognise them and look ahead everywhere else.
    vocab = vocab_of(dataset_dir)
    first = int(evaluate.eval_rows(str(dataset_dir), SEQ_LEN, 2048)[0, 1])

    class CausalOnTheFirstBatch(Bigram):
        def forward(self, idx):
            peeking = (idx[0, 1] != first).float()
            ahead = torch.nn.functional.one_hot(torch.roll(idx, -1, dims=1), vocab).float()
            return self.table[idx] + 10 * peeking * ahead

    with pytest.raises(SystemExit) as refused:
        checked_evaluation(CausalOnTheFirstBatch(vocab), dataset_dir,
                           torch.Generator().manual_seed(3))
    assert refused.value.code == evaluate.EXIT_REFUSED


class CountsItsCalls(Bigram):
    """Causal for the first 3 calls (the one-batch check), then it reads the next token."""

    def __init__(self, vocab_size):
        super().__init__(vocab_size)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, idx):
        self.calls.add_(1)
        peeking = (self.calls > 3).float()
        return self.table[idx] + 10 * peeking * self.table[torch.roll(idx, -1, dims=1)]


class RewritesItsInput(Bigram):
    """Writes into the token batch it is given: the targets are a view of the same rows."""

    def forward(self, idx):
        idx.fill_(7)
        return self.table[idx]


class DrawsRandomNumbers(Bigram):
    def forward(self, idx):    # the default generator's seed is fixed: its draws count calls
        return self.table[idx] + torch.rand(1)


class ReadsUninitialisedMemory(Bigram):
    def forward(self, idx):
        return self.table[idx] + torch.empty(1)


AUTOCASTS = {"PAIRLAB_PRECISION=bf16": lambda: torch.autocast("cpu", dtype=torch.bfloat16),
             "PAIRLAB_PRECISION=fp32": nullcontext}
STATEFUL = {
    CountsItsCalls: "the graph calls aten.add_.Tensor, which writes into a tensor in place: "
                    "the model must keep no state from one call to the next",
    RewritesItsInput: "the graph calls aten.fill_.Scalar, which writes into a tensor in place: "
                      "the model must keep no state from one call to the next",
    DrawsRandomNumbers: "the graph calls aten.rand.default, which draws random numbers: the "
                        "logits must depend on the tokens only",
    ReadsUninitialisedMemory: "the graph calls aten.empty.memory_format, whose memory holds "
                              "what an earlier call left there: the model must keep no state "
                              "from one call to the next",
}


@pytest.mark.parametrize("autocast", list(AUTOCASTS.values()), ids=list(AUTOCASTS))
@pytest.mark.parametrize("model", list(STATEFUL), ids=lambda cls: cls.__name__)
def test_a_graph_that_can_tell_one_call_from_another_is_refused(dataset_dir, tmp_path,
                                                                 model, autocast):
    program = harness.export_model(model(vocab_of(dataset_dir)), autocast=autocast(),
                                   batch_size=4, seq_len=SEQ_LEN)
    harness.save_model(program, tmp_path / "model")
    run = evaluator(tmp_path / "model", dataset_dir)
    assert run.returncode == evaluate.EXIT_REFUSED and run.result is None
    assert fail_line(run) == f"FAIL: model refused: {STATEFUL[model]}"


def test_a_graph_that_returns_a_buffer_to_update_is_refused(dataset_dir, capsys):
    # The functional form of the same counter: the update is an output of the graph.
    program = harness.export_model(CountsItsCalls(vocab_of(dataset_dir)),
                                   autocast=nullcontext(), batch_size=4,
                                   seq_len=SEQ_LEN).run_decompositions()
    with pytest.raises(SystemExit) as refused:
        evaluate.check_operations(program)
    assert refused.value.code == evaluate.EXIT_REFUSED
    assert capsys.readouterr().err.strip() == (
        "FAIL: model refused: the graph also returns buffer mutation, which the evaluator "
        "would carry into the next call: the model must keep no state from one call to the "
        "next")


@pytest.mark.e2e
def test_a_pickle_that_would_run_code_on_load_is_refused_unrun(dataset_dir, tmp_path):
    marker = tmp_path / "code-ran"

    class RunsCode:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    model_dir = hand_over(Bigram(vocab_of(dataset_dir)), tmp_path / "model")
    tensors = torch.load(model_dir / harness.TENSORS_FILE, weights_only=True)
    tensors["constants"]["payload"] = RunsCode()
    buffer = io.BytesIO()
    torch.save(tensors, buffer, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    (model_dir / harness.TENSORS_FILE).write_bytes(buffer.getvalue())

    run = evaluator(model_dir, dataset_dir)
    assert run.returncode == evaluate.EXIT_REFUSED and run.result is None
    assert fail_line(run).startswith("FAIL: model refused: tensors.pt holds something other "
                                     "than tensors")
    assert not marker.exists()


@pytest.mark.e2e
def test_a_torch_export_save_archive_is_not_loaded(dataset_dir, tmp_path):
    # torch.export.load would unpickle it with weights_only=False: the evaluator never does.
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    program = harness.export_model(Bigram(vocab_of(dataset_dir)), autocast=nullcontext(),
                                   batch_size=4, seq_len=SEQ_LEN)
    torch.export.save(program, model_dir / "model.pt2")
    run = evaluator(model_dir, dataset_dir)
    assert run.returncode == harness.EXIT_TRAINING_FAILED
    assert fail_line(run) == (f"FAIL: no program.json in {run_dir_of(run)}: train.py did not "
                              "reach the protected hand-off")


def run_dir_of(run) -> str:
    line = fail_line(run)
    return line.split(" in ", 1)[1].split(":", 1)[0]


def test_a_graph_that_reads_a_file_is_refused(dataset_dir, capsys):
    # torch.export cannot trace torch.from_file, but a crafted program.json can name it.
    program = harness.export_model(Bigram(vocab_of(dataset_dir)), autocast=nullcontext(),
                                   batch_size=4, seq_len=SEQ_LEN)
    node = next(n for n in program.graph.nodes if n.op == "call_function")
    node.target = torch.ops.aten.from_file.default
    with pytest.raises(SystemExit) as refused:
        evaluate.check_operations(program)
    assert refused.value.code == evaluate.EXIT_REFUSED
    assert capsys.readouterr().err.strip() == ("FAIL: model refused: the graph calls "
                                               "aten.from_file.default, which the evaluator "
                                               "does not run")


@pytest.mark.e2e
def test_a_forward_of_the_wrong_shape_is_refused(dataset_dir, tmp_path):
    class ReturnsALoss(Bigram):
        def forward(self, idx):
            return self.table[idx].mean()

    run = evaluator(hand_over(ReturnsALoss(vocab_of(dataset_dir)), tmp_path / "model"),
                    dataset_dir)
    assert run.returncode == evaluate.EXIT_REFUSED
    assert fail_line(run).startswith("FAIL: model refused: the forward must return logits of "
                                     "shape [batch, seq_len, >= ")


@pytest.mark.e2e
def test_the_eval_overhead_bench_runs_quick(dataset_dir):
    bench = Path(__file__).resolve().parents[1] / "bench" / "eval_overhead.py"
    proc = subprocess.run([sys.executable, str(bench), "--quick"], capture_output=True,
                          text=True, timeout=900,
                          env={**os.environ, "PAIRLAB_DATA_DIR": str(dataset_dir),
                               "PAIRLAB_DEVICE": "cpu"})
    assert proc.returncode == 0, proc.stderr
    figures = proc.stdout.splitlines()[-8:]
    assert figures[0].startswith("config: quick | device cpu | seq 64")
    assert [line.split(":")[0].split(" (")[0] for line in figures[1:7]] == [
        "in-process evaluation", "hand-off export + save", "evaluator, a fresh interpreter",
        "evaluator, the server's first", "evaluator, a fork of the running server", "overhead"]
    in_process, out_of_process = re.findall(r"\d+\.\d{6}", figures[7])
    assert float(in_process) == pytest.approx(float(out_of_process), abs=1e-4)
