"""What the offline tuner knows about each constant of train.py: its kind of scale, its
range, its step, and the moves most likely to help first."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from engine.base.constants import is_number


@dataclass(frozen=True)
class Knob:
    """How to move one constant.

    scale: "log" (multiply by `step`), "linear" (add `step`), "int" (add `step`),
    "ladder" (move to the neighbouring option; `options` lists them around the current value).
    """

    scale: str
    low: float
    high: float
    step: float
    role: str
    options: Callable[[object], list] | None = None
    verbs: tuple[str, str] = ("raising", "lowering")   # a step up, a step down, in words


def _ladder(values: list) -> Callable[[object], list]:
    return lambda current: sorted(set(values) | {current})


def _window_patterns(current: object) -> list:
    # Ordered from all-long to mostly-short windows, so a step has a direction.
    patterns = {"L", "SL", "SSL", "SSSL", current}
    return sorted(patterns, key=lambda p: (-p.count("L") / len(p), len(p), p))


def _adam_betas(current: object) -> list:
    if len(current) != 2:
        return [current]
    return sorted({(current[0], beta2) for beta2 in (0.9, 0.95, 0.99)} | {current})


KNOBS: dict[str, Knob] = {
    "MATRIX_LR": Knob("log", 1e-3, 0.5, 1.5, "learning rate of the transformer's matrices"),
    "EMBEDDING_LR": Knob("log", 0.01, 5.0, 1.5, "learning rate of the token embeddings"),
    "UNEMBEDDING_LR": Knob("log", 1e-4, 0.1, 1.5, "learning rate of the output head"),
    "SCALAR_LR": Knob("log", 0.01, 5.0, 1.5, "learning rate of the per-layer scalars"),
    "WEIGHT_DECAY": Knob("linear", 0.0, 1.0, 0.1, "weight decay"),
    "WARMUP_RATIO": Knob("linear", 0.0, 0.5, 0.05, "share of the run spent warming up"),
    "WARMDOWN_RATIO": Knob("linear", 0.0, 1.0, 0.1, "share of the run spent decaying the lr"),
    "FINAL_LR_FRAC": Knob("linear", 0.0, 0.5, 0.05, "final lr as a fraction of the peak"),
    "DEPTH": Knob("int", 1, 32, 1, "number of layers"),
    "ASPECT_RATIO": Knob("ladder", 8, 512, 1, "model width per layer",
                         _ladder([16, 24, 32, 48, 64, 96, 128, 192, 256])),
    "HEAD_DIM": Knob("ladder", 16, 256, 1, "attention head width",
                     _ladder([16, 32, 64, 128, 256])),
    "TOTAL_BATCH_SIZE": Knob("ladder", 2**8, 2**22, 1, "tokens per optimizer step",
                             _ladder([2**k for k in range(8, 23)])),
    "DEVICE_BATCH_SIZE": Knob("ladder", 1, 1024, 1, "rows per forward pass",
                              _ladder([2**k for k in range(0, 11)])),
    "WINDOW_PATTERN": Knob("ladder", 0, 0, 1, "attention window pattern", _window_patterns,
                           ("using more short windows in", "using more full windows in")),
    "ADAM_BETAS": Knob("ladder", 0, 0, 1, "AdamW betas", _adam_betas,
                       ("raising beta2 in", "lowering beta2 in")),
}
UNKNOWN_LR = Knob("log", 1e-6, 10.0, 1.5, "a learning rate")
NEVER_TOUCHED = ("SEED",)

# The first moves, most likely to help when a small CPU budget allows only a few hundred
# steps: (changes as (name, direction), why). Skipped once all of their constants have a
# history of their own, since the evidence then decides.
PRIORS: list[tuple[tuple[tuple[str, int], ...], str]] = [
    ((("MATRIX_LR", +1),),
     "a short budget allows few optimizer steps; a larger learning rate for the matrices, "
     "which hold most of the parameters, makes more progress per step"),
    ((("WARMDOWN_RATIO", +1),),
     "with few steps, a longer decay of the learning rate at the end usually lowers the "
     "final loss"),
    ((("TOTAL_BATCH_SIZE", -1), ("DEVICE_BATCH_SIZE", -1)),
     "halving the batch doubles the optimizer steps in the fixed budget; halving both keeps "
     "the gradient accumulation count, so the batch stays a whole number of micro-batches"),
    ((("EMBEDDING_LR", +1),),
     "embeddings see each token rarely in a short run; a larger learning rate lets them "
     "catch up"),
    ((("DEPTH", -1),),
     "a shallower model takes more optimizer steps in the fixed budget; at this scale more "
     "steps usually beat more layers"),
    ((("UNEMBEDDING_LR", +1),),
     "the output head learns slowly at its small learning rate; a short run may favour a "
     "larger one"),
    ((("WEIGHT_DECAY", -1),),
     "an undertrained model needs little regularization; less weight decay may let it fit "
     "faster"),
    ((("SCALAR_LR", +1),),
     "the residual mixing scalars may settle faster with a larger learning rate"),
    ((("FINAL_LR_FRAC", +1),),
     "ending the schedule above zero keeps learning in the last steps of a short run"),
    ((("DEPTH", -1), ("ASPECT_RATIO", +1)),
     "trading a layer for width keeps most of the capacity while each step gets cheaper"),
]


def knob_for(name: str) -> Knob | None:
    if name in NEVER_TOUCHED or "SEED" in name:
        return None
    if name in KNOBS:
        return KNOBS[name]
    return UNKNOWN_LR if name.endswith("_LR") else None


def step(knob: Knob, value: object, direction: int, level: float = 1.0) -> object | None:
    """The value one step (or a fraction `level` of one) away, or None past the bounds."""
    if knob.scale == "ladder":
        if level < 1:
            return None
        options = knob.options(value)
        index = options.index(value) + direction
        return options[index] if 0 <= index < len(options) else None
    if not is_number(value):
        return None
    if knob.scale == "log":
        if value <= 0:
            return None
        new = round_significant(value * knob.step ** (direction * level))
    elif knob.scale == "int":
        new = int(value) + direction * max(1, round(knob.step * level))
    else:
        new = round(value + direction * knob.step * level, 4)
    return new if knob.low <= new <= knob.high and new != value else None


def level_of(knob: Knob, old: object, new: object) -> float:
    """How many of the knob's steps a change took: 1 for a full step, 0.5 for a half."""
    if knob.scale == "log" and old > 0 and new > 0:
        steps = abs(math.log(new / old)) / math.log(knob.step)
    elif knob.scale == "linear":
        steps = abs(new - old) / knob.step
    else:
        return 1.0
    return 0.5 if steps < 0.75 else 1.0


def round_significant(value: float, digits: int = 2) -> float:
    return float(f"{value:.{digits}g}")


def position_of(knob: Knob, value: object, reference: object) -> float | None:
    """Where a value sits on the knob's axis, for comparing directions; None if off it."""
    if is_number(value):
        return float(value)
    options = knob.options(reference) if knob.options else []
    return float(options.index(value)) if value in options else None


def direction_of(knob: Knob, old: object, new: object) -> int:
    a, b = position_of(knob, old, old), position_of(knob, new, old)
    if a is None or b is None or a == b:
        return 0
    return 1 if b > a else -1
