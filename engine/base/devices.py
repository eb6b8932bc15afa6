"""The accelerators this process may use."""

from __future__ import annotations

import os


def visible_gpus() -> int:
    """GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else what torch sees."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return len([d for d in listed.split(",") if d.strip() and d.strip() != "-1"])
    if not os.path.exists("/dev/nvidiactl"):
        return 0                      # no NVIDIA driver: not worth importing torch to ask
    try:
        import torch
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:                 # no torch, or a broken driver: no GPU to count
        return 0
