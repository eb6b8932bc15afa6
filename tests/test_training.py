"""Training setup: real train.py subprocesses on a tiny config, scored by the real evaluator,
and the evaluator's metric on a hand-checked example."""

import ast
import json
import math
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.run.evaluation import evaluator_env, read_reported, run_evaluator
from engine.workspace.patch import PROTECTED_BEGIN, PROTECTED_END
from nanochat import evaluate, harness, prepare
from tests.conftest import PRECISIONS

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "nanochat" / "train.py"
PROGRESS = re.compile(r"step (\d+) \(([\d.]+)%\) \| loss: ([-\w.+]+).*?remaining: (\d+)s")
SUMMARY_KEYS = ["training_seconds", "peak_vram_mb", "mfu_percent", "total_tokens_M",
                "num_steps", "depth", "model handed to the evaluator"]
RESULT_TYPES = {"schema": int, "run_id": str, "val_bpb": float, "eval_tokens": int,
                "eval_bytes": int, "data_checksum": str, "num_params": int, "device": str,
                "seq_len": int, "eval_seconds": float}
REPORTED_KEYS = {"training_seconds", "peak_memory_mb", "num_steps", "total_tokens",
                 "mfu_percent", "depth"}
# One layer of width 64 on 8 rows of 64 tokens: a step takes milliseconds.
TINY = {"DEPTH": "1", "ASPECT_RATIO": "64", "HEAD_DIM": "32", "WINDOW_PATTERN": '"L"',
        "DEVICE_BATCH_SIZE": "8", "TOTAL_BATCH_SIZE": "512"}
SEQ_LEN = 64


def write_train_py(directory, **constants):
    """A copy of the template with module-level constants rewritten (values are source text),
    the way the offline tuner edits it."""
    source = TEMPLATE.read_text()
    lines = source.splitlines()
    for node in reversed(ast.parse(source).body):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in constants:
                lines[node.lineno - 1:node.end_lineno] = [f"{name} = {constants[name]}"]
    path = directory / "train.py"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_train(script, data_dir, **env):
    """train.py, then (if it handed a model over) the evaluator: (process, result, what
    train.py reported)."""
    model = script.parent / "model"
    full_env = {
        **os.environ, "PYTHONPATH": str(REPO), "PAIRLAB_DATA_DIR": str(data_dir),
        "PAIRLAB_DEVICE": "cpu", "PAIRLAB_COMPILE": "0", "PAIRLAB_SEQ_LEN": str(SEQ_LEN),
        "PAIRLAB_EVAL_TOKENS": "4096", "PAIRLAB_MODEL": str(model),
        "PAIRLAB_RUN_ID": "test-run", **env,
    }
    proc = subprocess.run([sys.executable, str(script)], cwd=script.parent, env=full_env,
                          capture_output=True, text=True, timeout=600)
    if not (model / harness.PROGRAM_FILE).exists():
        return proc, None, None
    evaluation = run_evaluator(model, evaluator_env(full_env, data_dir))
    assert evaluation.returncode == 0, evaluation.lines
    return proc, json.loads(evaluation.result), read_reported(model)


@pytest.fixture(scope="module", params=PRECISIONS)
def fixed_step_runs(request, dataset_dir, tmp_path_factory):
    """The same tiny config trained twice, side by side, for 30 steps with the same seed, on
    each precision path."""
    scripts = [write_train_py(tmp_path_factory.mktemp("run"), **TINY) for _ in range(2)]
    with ThreadPoolExecutor(2) as pool:
        return request.param, list(pool.map(lambda s: run_train(
            s, dataset_dir, PAIRLAB_MAX_STEPS="30", PAIRLAB_PRECISION=request.param), scripts))


def test_training_run_learns_and_is_scored_by_the_evaluator(fixed_step_runs, dataset_dir):
    precision, runs = fixed_step_runs
    proc, result, reported = runs[0]
    assert proc.returncode == 0, proc.stderr
    assert f"precision: {precision}" in proc.stdout
    losses = [float(m.group(3)) for m in PROGRESS.finditer(proc.stdout)]
    assert len(losses) == 30
    assert losses[-1] < losses[0] - 1.0, losses

    assert {k: type(v) for k, v in result.items()} == RESULT_TYPES
    assert result["run_id"] == "test-run" and result["device"] == "cpu"
    assert result["seq_len"] == SEQ_LEN and result["num_params"] > 0
    assert set(reported) == REPORTED_KEYS
    assert reported["num_steps"] == 30 and reported["total_tokens"] == 30 * 512
    assert reported["depth"] == 1
    meta = json.loads((dataset_dir / "meta.json").read_text())
    assert result["data_checksum"] == meta["checksum"]
    # A model that predicts uniformly over the vocabulary pays log2(V) bits on every scored
    # token: log2(V) * tokens / bytes bits per byte. Training must beat it.
    uniform_bpb = math.log2(meta["vocab_size"]) * result["eval_tokens"] / result["eval_bytes"]
    assert 0 < result["val_bpb"] < uniform_bpb - 0.5
    assert 0 < result["eval_tokens"] <= 4096 < result["eval_bytes"]

    # autoresearch's summary block, less val_bpb: train.py does not know it
    summary = proc.stdout.split("\n---\n", 1)[1].splitlines()
    assert [line.split(":")[0] for line in summary] == SUMMARY_KEYS


def test_fixed_steps_and_seed_give_identical_val_bpb(fixed_step_runs):
    (first, first_result, _), (second, second_result, _) = fixed_step_runs[1]
    assert first.returncode == second.returncode == 0
    assert first_result["val_bpb"] == second_result["val_bpb"]


def test_time_budget_stops_training(dataset_dir, tmp_path, precision):
    script = write_train_py(tmp_path, **TINY)
    proc, _, reported = run_train(script, dataset_dir, PAIRLAB_TIME_BUDGET="1.5",
                                  PAIRLAB_PRECISION=precision)
    assert proc.returncode == 0, proc.stderr
    # The first steps are not charged (compile warm-up), so the budget is reached just after.
    assert 1.5 <= reported["training_seconds"] < 10
    assert reported["num_steps"] > 10


def test_diverging_loss_fails_fast_with_exit_3(dataset_dir, tmp_path, precision):
    script = write_train_py(tmp_path, **TINY, UNEMBEDDING_LR="1e999")  # lr = inf
    proc, result, _ = run_train(script, dataset_dir, PAIRLAB_MAX_STEPS="50",
                                PAIRLAB_PRECISION=precision)
    assert proc.returncode == harness.EXIT_TRAINING_FAILED
    assert proc.stderr.strip().splitlines()[-1] == "FAIL: loss is nan at step 1"
    assert "Traceback" not in proc.stderr
    assert result is None


@pytest.mark.e2e
def test_missing_data_is_a_clear_error(tmp_path):
    script = write_train_py(tmp_path, **TINY)
    proc, result, _ = run_train(script, tmp_path / "nowhere")
    assert proc.returncode == harness.EXIT_SETUP_ERROR
    assert f"FAIL: no prepared data at {tmp_path / 'nowhere'}" in proc.stderr
    assert "run `pairlab prepare`" in proc.stderr
    assert "Traceback" not in proc.stderr and result is None


@pytest.mark.e2e
def test_an_unknown_precision_is_a_clear_error(dataset_dir, tmp_path):
    script = write_train_py(tmp_path, **TINY)
    proc, result, _ = run_train(script, dataset_dir, PAIRLAB_PRECISION="fp16")
    assert proc.returncode == harness.EXIT_SETUP_ERROR and result is None
    assert proc.stderr.strip().splitlines()[-1] == (
        "FAIL: PAIRLAB_PRECISION='fp16': expected one of auto, bf16, fp32")


@pytest.mark.parametrize("device, native_bf16, expected", [
    ("cuda", False, "bf16"), ("mps", False, "bf16"), ("cpu", True, "bf16"),
    ("cpu", False, "fp32")])
def test_auto_precision_is_bf16_where_it_is_native(device, native_bf16, expected):
    assert harness.pick_precision("auto", device, native_bf16) == expected
    assert harness.pick_precision("", device, native_bf16) == expected
    other = "fp32" if expected == "bf16" else "bf16"
    assert harness.pick_precision(other.upper(), device, native_bf16) == other   # forced


@pytest.mark.parametrize("flags, native", [
    ("fpu avx2 avx512f avx512_bf16 avx512_vnni", True), ("fpu avx2 amx_bf16 amx_tile", True),
    ("fpu sse4_2 avx2 avx512f avx512_vnni", False), ("fpu avx2 avx512_bf16x", False)])
def test_native_bf16_is_read_from_the_cpu_flags(flags, native):
    assert harness.cpu_has_native_bf16(f"processor\t: 0\nflags\t\t: {flags}\n") is native


@pytest.mark.e2e
def test_crashing_train_py_exits_nonzero_with_traceback(dataset_dir, tmp_path):
    script = write_train_py(tmp_path, **TINY)
    source = script.read_text().replace(
        "\nsmooth_train_loss = 0.0\n", '\nraise RuntimeError("injected crash")\n', 1)
    script.write_text(source)
    proc, result, _ = run_train(script, dataset_dir, PAIRLAB_MAX_STEPS="5")
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "RuntimeError: injected crash" in proc.stderr
    assert result is None


# ---------------------------------------------------------------------------
# The template's shape, which the engine and the offline tuner rely on
# ---------------------------------------------------------------------------

def test_template_fences_the_hand_off_exactly_once():
    lines = TEMPLATE.read_text().splitlines()
    begin, end = lines.index(PROTECTED_BEGIN), lines.index(PROTECTED_END)
    assert lines.count(PROTECTED_BEGIN) == lines.count(PROTECTED_END) == 1
    assert begin < end and "harness.handoff(" in lines[begin + 2]


def test_hyperparameters_are_literals_or_per_device_literals():
    module = ast.parse(TEMPLATE.read_text())
    names = {"ASPECT_RATIO", "HEAD_DIM", "WINDOW_PATTERN", "TOTAL_BATCH_SIZE", "EMBEDDING_LR",
             "UNEMBEDDING_LR", "MATRIX_LR", "SCALAR_LR", "WEIGHT_DECAY", "ADAM_BETAS",
             "WARMUP_RATIO", "WARMDOWN_RATIO", "FINAL_LR_FRAC", "DEPTH", "DEVICE_BATCH_SIZE",
             "SEED"}
    found = {}
    for node in module.body:
        if (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id in names):
            value = node.value
            if isinstance(value, ast.IfExp):
                assert ast.unparse(value.test) == "CPU", node.targets[0].id
                found[node.targets[0].id] = (ast.literal_eval(value.body),
                                             ast.literal_eval(value.orelse))
            else:
                found[node.targets[0].id] = ast.literal_eval(value)
    assert set(found) == names


# ---------------------------------------------------------------------------
# The metric, checked by hand
# ---------------------------------------------------------------------------

BOS = 5
TOKEN_BYTES = [1, 2, 3, 1, 4, 0]  # id 5 is <|bos|>: no bytes
VAL = [BOS, 0, 1, 2, BOS, 3, 4, 1, 0, 2, BOS, 4, 4]  # documents of 4, 6 and 3 tokens


@pytest.fixture
def tiny_val(tmp_path):
    """A dataset dir holding only what evaluation reads; seq_len 4, 8 eval tokens: 2 rows."""
    np.save(tmp_path / "token_bytes.npy", np.array(TOKEN_BYTES, dtype=np.int32))
    np.array(VAL, dtype=np.uint16).tofile(tmp_path / "val.bin")
    (tmp_path / "meta.json").write_text(json.dumps({"format": prepare.FORMAT, "bos_id": BOS}))
    return tmp_path


def rising_logits(idx):
    """The same logits at every position: 0.1 * v for token v."""
    return (0.1 * torch.arange(len(TOKEN_BYTES), dtype=torch.float32)).expand(*idx.shape, -1)


def test_eval_rows_pack_the_start_of_val_behind_bos(tiny_val):
    rows = evaluate.eval_rows(str(tiny_val), 4, 8)
    # Row 0: the first document whole, then the second one's BOS. Row 1: the rest of the
    # second document behind a fresh BOS, cropped to the row.
    assert rows.tolist() == [[BOS, 0, 1, 2, BOS], [BOS, 3, 4, 1, 0]]


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_evaluate_bpb_on_a_hand_checked_example(tiny_val, batch_size):
    # Scored targets (BOS excluded): row 0 -> 0, 1, 2; row 1 -> 3, 4, 1, 0.
    log_z = math.log(sum(math.exp(0.1 * v) for v in range(len(TOKEN_BYTES))))
    nats = sum(log_z - 0.1 * t for t in (0, 1, 2, 3, 4, 1, 0))
    nbytes = (1 + 2 + 3) + (1 + 4 + 2 + 1)
    evaluation = evaluate.evaluate(rising_logits, batch_size, tiny_val, seq_len=4, eval_tokens=8)
    assert evaluation.tokens == 7 and evaluation.bytes == nbytes == 14
    # log-softmax in float32, as on real logits
    assert evaluation.val_bpb == pytest.approx(nats / (math.log(2) * nbytes), rel=1e-6)


def test_too_small_validation_split_is_a_clear_error(tiny_val, capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate.evaluate(rising_logits, 2, tiny_val, seq_len=4, eval_tokens=40)
    assert exit_info.value.code == harness.EXIT_SETUP_ERROR
    error = capsys.readouterr().err
    assert "FAIL: val.bin at" in error and "PAIRLAB_EVAL_TOKENS" in error


def test_dataloader_is_bos_aligned_and_seeded(dataset_dir, monkeypatch):
    monkeypatch.setenv("PAIRLAB_DATA_DIR", str(dataset_dir))
    bos = json.loads((dataset_dir / "meta.json").read_text())["bos_id"]

    def batches(seed):
        loader = harness.make_dataloader(4, seed=seed, seq_len=32)
        return [next(loader) for _ in range(3)]

    first, again, other = batches(1), batches(1), batches(2)
    for (x, y, epoch), (x2, y2, _) in zip(first, again):
        assert x.shape == y.shape == (4, 32) and epoch >= 1
        assert (x[:, 0] == bos).all()
        assert torch.equal(x[:, 1:], y[:, :-1])
        assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(first[0][0], other[0][0])


# ---------------------------------------------------------------------------
# The throughput bench's --quick mode: it runs and prints its figures (never asserted)
# ---------------------------------------------------------------------------

BENCH_ROW = re.compile(r"^(.+?)\s+([\d,]+)\s+([\d.]+)%\s+([\d.]+)x\s+(\d+)\s+([\d.]+)$", re.M)


@pytest.mark.e2e
def test_throughput_bench_quick_runs_every_eager_configuration(dataset_dir):
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "train_throughput.py"), "--quick"],
        env={**os.environ, "PYTHONPATH": str(REPO), "PAIRLAB_DATA_DIR": str(dataset_dir)},
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = {m.group(1): m.groups()[1:] for m in BENCH_ROW.finditer(proc.stdout)}
    shipped = "bf16" if harness.cpu_has_native_bf16() else "fp32"
    other = "fp32" if shipped == "bf16" else "bf16"
    assert list(rows) == ["naive port: fp32, eager, spinning threads",
                          f"{shipped} (shipped), eager, default malloc",
                          f"{shipped} (shipped), eager, tuned malloc",
                          f"{other} autocast, eager, tuned malloc"], proc.stdout
    assert rows["naive port: fp32, eager, spinning threads"][2] == "1.00"
    # Thread and allocator settings change the speed, never the numbers: same val_bpb.
    val_bpbs = {row[-1] for name, row in rows.items() if shipped in name}
    assert len(val_bpbs) == 1, proc.stdout
    assert "vs naive port:" in proc.stdout and "peak memory:" in proc.stdout
