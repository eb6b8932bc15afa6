"""The fence around train.py's protected hand-off: no patch may change a line between these
markers (engine/workspace/patch.py), the tuner never reads a constant inside them."""

PROTECTED_BEGIN = ("# ---- pairlab: protected begin (the harness evaluates the model; "
                   "patches may not change this block) ----")
PROTECTED_END = "# ---- pairlab: protected end ----"
