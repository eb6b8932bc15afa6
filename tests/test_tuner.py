"""The offline tuner: parsing and one-line rewrites of train.py's constants, and a search
that learns from the journal. No training: val_bpb comes from known synthetic functions."""

import difflib
import math
import re
import threading
from pathlib import Path

import pytest

from engine.agents.base import AgentError, DraftCancelled, DraftContext, HistoryItem
from engine.agents.trials import parse_description
from engine.agents.tuner import TunerAgent
from engine.base.constants import format_like, parse_constants, rewrite
from engine.base.protected import PROTECTED_BEGIN, PROTECTED_END

TRAIN_PY = f'''"""A small GPT trained for a fixed budget (the tuner's test double of train.py)."""

import torch

from nanochat.harness import CPU, DEVICE

# ---------------------------------------------------------------------------
# Hyperparameters (edit these directly; `X if CPU else Y` gives per-device values)
# ---------------------------------------------------------------------------

DEPTH = 4 if CPU else 8  # number of transformer layers
ASPECT_RATIO = 32 if CPU else 64  # model_dim = DEPTH * ASPECT_RATIO, rounded up to HEAD_DIM
HEAD_DIM = 64 if CPU else 128  # width of one attention head
WINDOW_PATTERN = "L" if CPU else "SSSL"  # per layer, cycled: L = full context, S = half
TOTAL_BATCH_SIZE = 2**12 if CPU else 2**19  # tokens per optimizer step
DEVICE_BATCH_SIZE = 16 if CPU else 128  # rows per forward/backward (memory bound)
EMBEDDING_LR = 0.6  # AdamW lr of the token embeddings
UNEMBEDDING_LR = 0.004  # AdamW lr of lm_head
MATRIX_LR = 0.04  # Muon lr of the transformer's matrices
SCALAR_LR = 0.5  # AdamW lr of the per-layer residual mixing scalars
WEIGHT_DECAY = 0.2  # cautious weight decay for Muon
ADAM_BETAS = (0.8, 0.95)  # AdamW (beta1, beta2)
WARMUP_RATIO = 0.0  # fraction of the run spent ramping the lr up
WARMDOWN_RATIO = 0.5  # fraction of the run spent ramping the lr down at the end
FINAL_LR_FRAC = 0.0  # lr at the very end, as a fraction of the peak
SEED = 42  # initialization and data order
RUN_LABEL = "tiny"  # a string the tuner has no knob for
MODEL_DIM = DEPTH * ASPECT_RATIO  # derived, not a literal


def get_lr_multiplier(progress):
    step = 0.5  # local, not a module constant
    if progress < 1.0 - WARMDOWN_RATIO:
        return 1.0
    return step


{PROTECTED_BEGIN}
PROBE_LR = 0.1
{PROTECTED_END}
'''

IF_EXP_NAMES = ("DEPTH", "ASPECT_RATIO", "HEAD_DIM", "WINDOW_PATTERN", "TOTAL_BATCH_SIZE",
                "DEVICE_BATCH_SIZE")


def values(source: str, device: str = "cpu") -> dict:
    return {name: c.value for name, c in parse_constants(source, device).items()}


def changed_lines(old: str, new: str) -> list[tuple[str, str]]:
    pairs = zip(old.splitlines(), new.splitlines(), strict=True)
    return [(a, b) for a, b in pairs if a != b]


def context(source: str, history: list, best: float | None = None, validate=None,
            noise: float | None = None) -> DraftContext:
    return DraftContext(workspace=Path("."), targets=["train.py"], files={"train.py": source},
                        base_commit="0" * 40, program="", harness_source="",
                        history=list(history), best_val_bpb=best, noise_floor=noise,
                        validate=validate or (lambda files: None))


def draft(agent, ctx, lines=None):
    emit = (lambda kind, text: lines.append((kind, text))) if lines is not None \
        else (lambda kind, text: None)
    return agent.draft(ctx, emit, threading.Event())


def run_rounds(agent, objective, rounds, source=TRAIN_PY, history=None, device="cpu"):
    """The loop with a known objective: keep what beats the best, journal everything."""
    history = list(history or [])
    best = objective(values(source, device))
    history.append(HistoryItem("baseline", status="keep", val_bpb=best))
    proposals = []
    for _ in range(rounds):
        d = draft(agent, context(source, history, best))
        new = d.files["train.py"]
        val = objective(values(new, device))
        diff = "".join(difflib.unified_diff(source.splitlines(True), new.splitlines(True),
                                            "a/train.py", "b/train.py"))
        status = "keep" if val < best else "discard"
        history.append(HistoryItem(d.description, d.hypothesis, status, val, val - best,
                                   diff=diff))
        proposals.append((source, new, d))
        if status == "keep":
            source, best = new, val
    return best, proposals, history


def bowl(matrix_lr: float, warmdown: float):
    """val_bpb as a quadratic bowl in log MATRIX_LR and WARMDOWN_RATIO."""
    return lambda c: (1.0 + 0.05 * math.log(c["MATRIX_LR"] / matrix_lr) ** 2
                      + 0.5 * (c["WARMDOWN_RATIO"] - warmdown) ** 2)


# ---- parsing and rewriting --------------------------------------------------------------

def test_parse_reads_plain_and_per_device_literals():
    cpu, gpu = parse_constants(TRAIN_PY, "cpu"), parse_constants(TRAIN_PY, "cuda")
    assert cpu["DEPTH"].value == 4 and gpu["DEPTH"].value == 8
    assert cpu["TOTAL_BATCH_SIZE"].value == 2**12 and cpu["TOTAL_BATCH_SIZE"].text == "2**12"
    assert gpu["WINDOW_PATTERN"].value == "SSSL" and cpu["WINDOW_PATTERN"].text == '"L"'
    assert cpu["DEPTH"].conditional and not cpu["MATRIX_LR"].conditional
    assert cpu["MATRIX_LR"].value == gpu["MATRIX_LR"].value == 0.04
    assert cpu["ADAM_BETAS"].value == (0.8, 0.95)
    assert cpu["SEED"].value == 42 and cpu["RUN_LABEL"].value == "tiny"
    # derived expressions, function locals and the protected block are not constants
    assert not {"MODEL_DIM", "step", "PROBE_LR", "CPU"} & set(cpu)
    line = TRAIN_PY.splitlines()[cpu["MATRIX_LR"].line]
    assert line[cpu["MATRIX_LR"].start:cpu["MATRIX_LR"].end] == "0.04"


def test_parse_handles_negated_test_and_leaves_out_reassigned_names():
    source = "LR = 0.1 if not CPU else 0.01  # gpu first\nDEPTH = 2\nDEPTH = 3\nBIAS = -1.5\n"
    assert values(source, "cpu") == {"LR": 0.01, "BIAS": -1.5}
    assert values(source, "cuda") == {"LR": 0.1, "BIAS": -1.5}


def test_rewrite_changes_one_line_per_constant_and_keeps_comments():
    constants = parse_constants(TRAIN_PY, "cpu")
    new = rewrite(TRAIN_PY, constants, {"TOTAL_BATCH_SIZE": 2**11, "MATRIX_LR": 0.06})
    assert changed_lines(TRAIN_PY, new) == [
        ("TOTAL_BATCH_SIZE = 2**12 if CPU else 2**19  # tokens per optimizer step",
         "TOTAL_BATCH_SIZE = 2**11 if CPU else 2**19  # tokens per optimizer step"),
        ("MATRIX_LR = 0.04  # Muon lr of the transformer's matrices",
         "MATRIX_LR = 0.06  # Muon lr of the transformer's matrices")]


def test_format_keeps_the_literal_style():
    assert format_like(2**15, "2**16") == "2**15"
    assert format_like(2**15, "2 ** 16") == "2 ** 15"
    assert format_like(0.00015, "1e-4") == "1.5e-4"
    assert format_like("SL", "'L'") == "'SL'"
    assert format_like((0.8, 0.99), "(0.8, 0.95)") == "(0.8, 0.99)"


def test_description_is_readable_and_parses_back():
    text = 'MATRIX_LR 0.04 -> 0.06, ADAM_BETAS (0.8, 0.95) -> (0.8, 0.99), WINDOW_PATTERN "L" -> "SL"'
    assert parse_description(text) == {"MATRIX_LR": (0.04, 0.06),
                                       "ADAM_BETAS": ((0.8, 0.95), (0.8, 0.99)),
                                       "WINDOW_PATTERN": ("L", "SL")}


# ---- proposals --------------------------------------------------------------------------

def test_first_draft_is_a_reviewable_change_with_a_hypothesis():
    lines = []
    d = draft(TunerAgent(), context(TRAIN_PY, [HistoryItem("baseline", status="keep",
                                                           val_bpb=1.5)], 1.5), lines)
    changes = changed_lines(TRAIN_PY, d.files["train.py"])
    assert 1 <= len(changes) <= 2
    for old, new in changes:   # only the literal moved: same name, same comment
        assert old.split("=")[0] == new.split("=")[0]
        assert old.split("#")[1] == new.split("#")[1]
    assert set(parse_description(d.description)) == {old.split()[0] for old, _ in changes}
    assert len(d.hypothesis) > 40
    assert d.reasoning and all(kind == "text" for kind, _ in lines)
    assert any("tunable constants" in text for _, text in lines)


def test_long_run_never_repeats_and_never_touches_seed_or_the_gpu_branch():
    def rugged(c):
        return (1.0 + 0.05 * math.log(c["MATRIX_LR"] / 0.02) ** 2 + 0.01 * abs(c["DEPTH"] - 3)
                + 0.3 * (c["WARMDOWN_RATIO"] - 0.7) ** 2
                + 0.002 * math.sin(10 * c["EMBEDDING_LR"]))
    _, proposals, _ = run_rounds(TunerAgent(seed=3), rugged, 45)
    gpu = {name: values(TRAIN_PY, "cuda")[name] for name in IF_EXP_NAMES}
    seen = {tuple(sorted(values(TRAIN_PY).items()))}
    for old, new, d in proposals:
        config = tuple(sorted(values(new).items()))
        assert config not in seen, f"repeated: {d.description}"
        seen.add(config)
        assert 1 <= len(changed_lines(old, new)) <= 2
        assert values(new)["SEED"] == 42
        # the other device's branch of `cpu if CPU else gpu` never moves
        assert {name: values(new, "cuda")[name] for name in IF_EXP_NAMES} == gpu
    tiers = {re.search(r"^Proposing .* \((\w+)\): ", d.reasoning, re.M)[1]
             for _, _, d in proposals}
    assert {"prior", "exploit", "reverse", "explore"} <= tiers


def test_gpu_workspace_edits_the_gpu_branch():
    agent = TunerAgent(device="cuda")
    _, proposals, _ = run_rounds(agent, bowl(0.1, 0.8), 8, device="cuda")
    def per_device(source, device):
        return {name: values(source, device)[name] for name in IF_EXP_NAMES}
    assert all(per_device(new, "cpu") == per_device(TRAIN_PY, "cpu") for _, new, _ in proposals)
    assert any(per_device(new, "cuda") != per_device(TRAIN_PY, "cuda")
               for _, new, _ in proposals)


# ---- learning from the journal ----------------------------------------------------------

@pytest.mark.parametrize("optimum", [(0.1, 0.8), (0.015, 0.3)])
def test_search_walks_down_a_bowl(optimum):
    objective = bowl(*optimum)
    start = objective(values(TRAIN_PY))
    best, proposals, _ = run_rounds(TunerAgent(), objective, 15)
    # the excess over the optimum (1.0) shrinks by more than three quarters
    assert best - 1.0 < 0.25 * (start - 1.0)


def test_a_kept_change_is_followed_in_the_same_direction():
    source = rewrite(TRAIN_PY, parse_constants(TRAIN_PY), {"WARMDOWN_RATIO": 0.6})
    history = [HistoryItem("baseline", status="keep", val_bpb=1.2),
               HistoryItem("WARMDOWN_RATIO 0.5 -> 0.6", status="keep", val_bpb=1.18,
                           delta=-0.02)]   # description only: no diff in the journal
    d = draft(TunerAgent(), context(source, history, 1.18))
    assert d.description == "WARMDOWN_RATIO 0.6 -> 0.7"
    assert "helped" in d.hypothesis and "-0.0200" in d.hypothesis


def test_a_change_that_hurt_is_reversed():
    history = [HistoryItem("baseline", status="keep", val_bpb=1.2),
               HistoryItem("MATRIX_LR 0.04 -> 0.06", status="discard", val_bpb=1.25,
                           delta=0.05)]
    d = draft(TunerAgent(), context(TRAIN_PY, history, 1.2))
    assert d.description == "MATRIX_LR 0.04 -> 0.027"
    assert "hurt" in d.hypothesis


def test_a_crash_fences_off_that_direction():
    history = [HistoryItem("baseline", status="keep", val_bpb=1.2),
               HistoryItem("DEPTH 4 -> 5", status="crash", message="out of memory")]
    _, proposals, _ = run_rounds(TunerAgent(), lambda c: 1.0 + 0.02 * abs(c["DEPTH"] - 7), 30,
                                 history=history)
    assert all(values(new)["DEPTH"] < 5 for _, new, _ in proposals)


def test_vetoed_values_and_named_constants_are_left_alone():
    history = [
        HistoryItem("baseline", status="keep", val_bpb=1.2),
        HistoryItem("MATRIX_LR 0.04 -> 0.06", status="vetoed", veto_reason="not that one"),
        HistoryItem("DEPTH 4 -> 3, ASPECT_RATIO 32 -> 48", status="vetoed",
                    veto_reason="leave the depth alone, it is fixed by memory"),
    ]
    _, proposals, _ = run_rounds(TunerAgent(), bowl(0.06, 0.5), 30, history=history)
    for _, new, _ in proposals:
        assert values(new)["DEPTH"] == 4
        assert values(new)["ASPECT_RATIO"] != 48
        assert values(new)["MATRIX_LR"] != 0.06
    assert any(values(new)["MATRIX_LR"] != 0.04 for _, new, _ in proposals)


def test_history_that_scrolled_out_of_the_context_is_remembered():
    agent = TunerAgent()
    objective = bowl(0.1, 0.8)
    best = objective(values(TRAIN_PY))
    history, source, seen = [HistoryItem("baseline", status="keep", val_bpb=best)], TRAIN_PY, set()
    for _ in range(30):
        d = draft(agent, context(source, history[-5:], best))   # only the latest five entries
        config = tuple(sorted(values(d.files["train.py"]).items()))
        assert config not in seen
        seen.add(config)
        val = objective(values(d.files["train.py"]))
        status = "keep" if val < best else "discard"
        history.append(HistoryItem(d.description, d.hypothesis, status, val, val - best))
        if status == "keep":
            source, best = d.files["train.py"], val


# ---- the engine's side of the contract ----------------------------------------------------

def test_a_refused_candidate_falls_back_to_the_next():
    def refuse_matrix_lr(files):
        changed = values(files["train.py"])["MATRIX_LR"] != 0.04
        return "MATRIX_LR is out of bounds for this run" if changed else None
    lines = []
    ctx = context(TRAIN_PY, [HistoryItem("baseline", status="keep", val_bpb=1.2)], 1.2,
                  validate=refuse_matrix_lr)
    d = draft(TunerAgent(), ctx, lines)
    assert values(d.files["train.py"])["MATRIX_LR"] == 0.04
    assert any("refused: MATRIX_LR is out of bounds" in text for _, text in lines)


def test_refusing_everything_raises_an_agent_error():
    ctx = context(TRAIN_PY, [], validate=lambda files: "the patch touches protected lines")
    with pytest.raises(AgentError) as caught:
        draft(TunerAgent(), ctx)
    assert "protected lines" in caught.value.hint


def test_a_second_draft_from_the_same_journal_proposes_something_else():
    # the first proposal is still in review or training, so it is not in the journal yet
    agent, history = TunerAgent(), [HistoryItem("baseline", status="keep", val_bpb=1.2)]
    first = draft(agent, context(TRAIN_PY, history, 1.2))
    second = draft(agent, context(TRAIN_PY, history, 1.2))
    assert first.files != second.files


def test_same_journal_and_seed_give_the_same_proposals():
    runs = [run_rounds(TunerAgent(seed=7), bowl(0.02, 0.7), 25)[1] for _ in range(2)]
    assert [d.description for _, _, d in runs[0]] == [d.description for _, _, d in runs[1]]


def test_cancel_stops_the_draft():
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(DraftCancelled):
        TunerAgent().draft(context(TRAIN_PY, []), lambda kind, text: None, cancel)


def test_no_tunable_constants_is_an_agent_error():
    with pytest.raises(AgentError):
        draft(TunerAgent(), context("SEED = 1\nNAME = 'x'\n", []))


# ---- train.py's own checks --------------------------------------------------------------

TEMPLATE = (Path(__file__).resolve().parent.parent / "nanochat" / "train.py").read_text()
HARNESS = (Path(__file__).resolve().parent.parent / "nanochat" / "harness.py").read_text()


def harness_context(source, history, best):
    ctx = context(source, history, best)
    ctx.harness_source = HARNESS
    return ctx


def test_the_tuner_never_proposes_a_batch_the_template_asserts_against():
    # Smaller batches look better and a veto freezes DEVICE_BATCH_SIZE, so the search pushes
    # TOTAL_BATCH_SIZE down alone; the template asserts it stays a whole number of
    # micro-batches (16 rows of 256 tokens).
    def objective(c):
        return 1.0 + 0.01 * math.log2(c["TOTAL_BATCH_SIZE"]) + 0.2 * (c["MATRIX_LR"] - 0.04) ** 2

    agent, source, lines = TunerAgent(seed=1, env={}), TEMPLATE, []
    best = objective(values(source))
    history = [HistoryItem("baseline", status="keep", val_bpb=best),
               HistoryItem("DEPTH 4 -> 3", status="vetoed",
                           veto_reason="leave DEVICE_BATCH_SIZE alone, memory is tight")]
    proposed = []
    for _ in range(25):
        d = draft(agent, harness_context(source, history, best), lines)
        config = values(d.files["train.py"])
        proposed.append(config)
        val = objective(config)
        status = "keep" if val < best else "discard"
        diff = "".join(difflib.unified_diff(source.splitlines(True),
                                            d.files["train.py"].splitlines(True)))
        history.append(HistoryItem(d.description, d.hypothesis, status, val, val - best,
                                   diff=diff))
        if status == "keep":
            source, best = d.files["train.py"], val
    for config in proposed:
        assert config["TOTAL_BATCH_SIZE"] % (config["DEVICE_BATCH_SIZE"] * 256) == 0, config
    skipped = [text for _, text in lines if text.startswith("Skipping ")]
    assert skipped, "the search never met the check, so this test would not catch a breach"
    assert all("TOTAL_BATCH_SIZE must be a multiple of a micro-batch" in t for t in skipped)


def test_a_check_added_to_the_template_is_honoured():
    source = TRAIN_PY + '\nassert MATRIX_LR <= 0.05, "MATRIX_LR above 0.05 diverges"\n'
    lines = []
    d = draft(TunerAgent(), context(source, [HistoryItem("baseline", status="keep",
                                                          val_bpb=1.5)], 1.5), lines)
    assert values(d.files["train.py"])["MATRIX_LR"] <= 0.05
    line = source.splitlines().index('assert MATRIX_LR <= 0.05, "MATRIX_LR above 0.05 diverges"')
    assert (f"Skipping MATRIX_LR 0.04 -> 0.06: train.py's own check at line {line + 1} would "
            "reject it (MATRIX_LR above 0.05 diverges).\n") in [text for _, text in lines]


def test_a_check_the_current_file_fails_is_not_applied():
    # The tests' tiny config runs with PAIRLAB_SEQ_LEN=64; told nothing, the tuner assumes
    # 256 and the baseline itself would fail: it says so and proposes anyway.
    from tests.conftest import tiny_train_py
    lines = []
    ctx = harness_context(tiny_train_py(TEMPLATE), [HistoryItem("baseline", status="keep",
                                                                val_bpb=1.5)], 1.5)
    draft(TunerAgent(env={}), ctx, lines)
    assert any(text.startswith("Not applying train.py's check 'TOTAL_BATCH_SIZE must be")
               for _, text in lines)
    lines.clear()
    draft(TunerAgent(env={"PAIRLAB_SEQ_LEN": "64"}), ctx, lines)
    assert not any(text.startswith("Not applying") for _, text in lines)


def test_harness_settings_follow_the_device_and_the_environment():
    from engine.agents.template_checks import harness_settings
    assert harness_settings(HARNESS, "cpu", {})["MAX_SEQ_LEN"] == 256
    assert harness_settings(HARNESS, "cuda", {})["MAX_SEQ_LEN"] == 2048
    assert harness_settings(HARNESS, "cpu", {"PAIRLAB_SEQ_LEN": "64"})["MAX_SEQ_LEN"] == 64


def test_checks_read_the_constants_an_adopted_repo_imports(tmp_path):
    from engine.agents.template_checks import violations, workspace_settings
    (tmp_path / "prepare.py").write_text("MAX_SEQ_LEN = 2048\nTIME_BUDGET = 300\n")
    train = ("from prepare import MAX_SEQ_LEN, TIME_BUDGET\nDEVICE_BATCH_SIZE = 128\n"
             "TOTAL_BATCH_SIZE = 2**18\ntokens_per_fwdbwd = DEVICE_BATCH_SIZE * MAX_SEQ_LEN\n"
             "assert TOTAL_BATCH_SIZE % tokens_per_fwdbwd == 0\n")
    imported = workspace_settings(train, tmp_path)
    assert imported == {"MAX_SEQ_LEN": 2048, "TIME_BUDGET": 300}
    assert violations(train, imported) == []
    bad = violations(train.replace("2**18", "2**17"), imported)
    assert [(v.line, v.message) for v in bad] == [(5, "TOTAL_BATCH_SIZE % tokens_per_fwdbwd == 0")]
    # a check on something only the run has is left to the run
    assert violations("import torch\nassert torch.cuda.is_available()\n", {}) == []
