"""What only a GPU runs, tested as far as a CPU can (issue 18): FA3 in training and SDPA at
the hand-off, the datasheet peaks, and the device panel's NVML readings, with stand-ins for
the FA3 kernels and for NVML."""

from __future__ import annotations

import re
import sys
import types

import pytest
import torch

from engine.run.monitor import Monitor, Nvml
from nanochat import harness
from tests.test_training import TEMPLATE, TINY, run_train, write_train_py
from tui.widgets.device import describe

SETUP_RULER = "# ---------------------------------------------------------------------------\n# Setup"


@pytest.fixture
def template_definitions(monkeypatch) -> dict:
    """The template's definitions (hyperparameters, model, optimizer, schedules), run as a
    module of their own without the setup and training loop."""
    module = types.ModuleType("train_definitions")
    monkeypatch.setitem(sys.modules, module.__name__, module)   # dataclasses look it up
    source = TEMPLATE.read_text().split(SETUP_RULER)[0]
    exec(compile(source, str(TEMPLATE), "exec"), module.__dict__)
    return module.__dict__


def fa3_reference(q, k, v, causal, window_size):
    """FA3's documented semantics, written out: with window_size=(left, right), query i
    attends keys j with i - left <= j <= i + right (inclusive), and causal caps right at 0."""
    left, right = window_size
    seq_len = q.size(1)
    i = torch.arange(seq_len)[:, None]
    j = torch.arange(seq_len)[None, :]
    allowed = (j >= i - left if left >= 0 else True) & (j <= i + (0 if causal else right))
    scores = torch.einsum("bihd,bjhd->bhij", q, k) / q.size(-1) ** 0.5
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("bhij,bjhd->bihd", scores.softmax(-1), v)


@pytest.mark.parametrize("window", ["full", "half"])
def test_the_sdpa_path_attends_where_fa3_does(template_definitions, window):
    # A model trained with FA3 on a GPU is exported with SDPA: the two must see the same
    # tokens, or the evaluator scores another model. SDPA once saw one token fewer.
    defs = template_definitions
    seq_len = 16
    size = seq_len if window == "full" else seq_len // 2
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, seq_len, 3, 8) for _ in range(3))
    defs["fa3"] = types.SimpleNamespace(flash_attn_func=fa3_reference)
    with_fa3 = defs["attention"](q, k, v, size)
    defs["fa3"] = None
    with_sdpa = defs["attention"](q, k, v, size)
    assert torch.allclose(with_fa3, with_sdpa, atol=1e-5), (with_fa3 - with_sdpa).abs().max()


# A stand-in for the FA3 kernels: FA3's semantics for training, and, like a CUDA kernel, not
# a graph of ATen operations, so export fails if the hand-off does not switch to SDPA.
FA3_STANDIN = '''
import types as _types
_fa3_calls = []


def _standin_flash_attn_func(q, k, v, causal, window_size):
    if torch.compiler.is_exporting():
        raise RuntimeError("FA3 kernels are CUDA code, not ATen operations: not exportable")
    _fa3_calls.append(1)
    if len(_fa3_calls) == 1:
        print("fa3 stand-in: training with it")
    left = window_size[0]
    i = torch.arange(q.size(1), device=q.device)[:, None]
    j = torch.arange(q.size(1), device=q.device)[None, :]
    allowed = (j <= i) & (j >= i - left)
    return F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)),
                                          attn_mask=allowed).transpose(1, 2)


fa3 = _types.SimpleNamespace(flash_attn_func=_standin_flash_attn_func)
'''


def test_a_model_trained_with_fa3_is_handed_off_with_sdpa_and_scored(dataset_dir, tmp_path,
                                                                     precision):
    script = write_train_py(tmp_path, **{**TINY, "WINDOW_PATTERN": '"SL"', "DEPTH": "2"})
    source = script.read_text()
    assert "\nfa3 = load_flash_attention()\n" in source
    script.write_text(source.replace("\nfa3 = load_flash_attention()\n",
                                     "\nfa3 = load_flash_attention()\n" + FA3_STANDIN, 1))
    proc, result, _ = run_train(script, dataset_dir, PAIRLAB_MAX_STEPS="4",
                                PAIRLAB_PRECISION=precision)
    assert proc.returncode == 0, proc.stderr
    assert "fa3 stand-in: training with it" in proc.stdout
    assert result is not None and 0 < result["val_bpb"] < 20


@pytest.mark.parametrize("name, expected", [
    ("NVIDIA H100 80GB HBM3", 989.5e12), ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H100 NVL", 835e12), ("NVIDIA H200", 989.5e12), ("NVIDIA GH200 480GB", 989.5e12),
    ("NVIDIA A100-SXM4-40GB", 312e12), ("NVIDIA L40S", 362e12), ("NVIDIA L4", 121e12),
    ("NVIDIA GeForce RTX 3090", None)])
def test_datasheet_peaks_by_cuda_name(name, expected):
    assert harness.datasheet_peak(name, torch.bfloat16) == expected
    assert harness.datasheet_peak(name, torch.float32) is None    # fp32: measured


# ---- NVML, faked ----------------------------------------------------------------------------

class NVMLError(Exception):
    pass


def fake_pynvml(gpus: list[dict]) -> types.ModuleType:
    """pynvml answering for `gpus`; a reading given as an exception raises it, as NVML
    does for "not supported" or a GPU that fell off the bus."""
    module = types.ModuleType("pynvml")
    module.NVML_TEMPERATURE_GPU = 0
    module.calls = []

    def reading(key):
        def read(handle, *args):
            value = gpus[handle][key]
            if isinstance(value, Exception):
                raise value
            return value
        return read

    module.nvmlInit = lambda: module.calls.append("init")
    module.nvmlShutdown = lambda: module.calls.append("shutdown")
    module.nvmlDeviceGetCount = lambda: len(gpus)
    module.nvmlDeviceGetHandleByIndex = lambda index: index
    module.nvmlDeviceGetName = reading("name")
    module.nvmlDeviceGetUtilizationRates = reading("util")
    module.nvmlDeviceGetMemoryInfo = reading("memory")
    module.nvmlDeviceGetTemperature = reading("temp")
    module.nvmlDeviceGetPowerUsage = reading("power_mw")
    return module


GPUS = [
    {"name": b"NVIDIA H100 80GB HBM3", "util": types.SimpleNamespace(gpu=97),
     "memory": types.SimpleNamespace(used=60 * 2**30, total=80 * 2**30), "temp": 71,
     "power_mw": 612_000},
    {"name": "NVIDIA H100 80GB HBM3", "util": NVMLError("GPU is lost"),
     "memory": NVMLError("GPU is lost"), "temp": NVMLError("not supported"),
     "power_mw": NVMLError("not supported")},
]


def test_nvml_readings_reach_the_device_panel_and_failures_read_n_a(monkeypatch):
    fake = fake_pynvml(GPUS)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monitor = Monitor()
    sample = monitor.sample()
    monitor.stop()
    assert sample.kind == "gpu" and fake.calls == ["init", "shutdown"]
    first, lost = sample.devices
    assert first == {"index": 0, "name": "NVIDIA H100 80GB HBM3", "util": 97,
                     "mem_used_mb": 60 * 1024, "mem_total_mb": 80 * 1024, "temp_c": 71,
                     "power_w": 612.0}
    assert [lost[k] for k in ("util", "mem_used_mb", "temp_c", "power_w")] == [None] * 4
    lines = describe(sample, width=100).plain.splitlines()
    gpu0 = next(line for line in lines if line.startswith("GPU0"))
    assert re.search(r"util █{10} +97%", gpu0) and "60.0/80.0 GB" in gpu0
    assert "71°C" in gpu0 and "612 W" in gpu0
    gpu1 = next(line for line in lines if line.startswith("GPU1"))
    assert gpu1.count("n/a") == 5                      # util, used, total, temp, power


def test_a_driver_that_will_not_start_leaves_the_cpu_readings(monkeypatch):
    fake = fake_pynvml(GPUS)
    fake.nvmlInit = lambda: (_ for _ in ()).throw(NVMLError("Driver Not Loaded"))
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert not Nvml().available
    sample = Monitor().sample()
    assert sample.kind == "cpu" and sample.cpu_percent is not None
