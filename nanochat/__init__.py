"""The training setup: harness (fixed), the train.py template, prepare, evaluate.

The names of the hand-off's files live here, free of torch, so the engine shares them."""

PROGRAM_FILE = "program.json"  # the serialized graph (torch._export.serde), JSON
TENSORS_FILE = "tensors.pt"  # {"state_dict", "constants", "example_inputs"}, tensors only
REPORT_FILE = "reported.json"  # what train.py says about its run: shown, never trusted
