"""The device monitor on this machine (no GPU, no NVML library) and on a real busy child."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import psutil
import pytest

from engine.base.events import DeviceSample
from engine.run.monitor import Monitor, Nvml


def test_cpu_sample_has_numbers():
    monitor = Monitor()
    sample = monitor.sample()
    assert isinstance(sample, DeviceSample)
    assert 0 <= sample.cpu_percent <= 100
    assert 0 < sample.ram_used_mb < sample.ram_total_mb
    assert sample.trainer_cpu_percent is None and sample.trainer_rss_mb is None
    assert monitor.latest() is sample
    sample.to_json()   # serializable as an event
    monitor.stop()


def test_without_nvml_the_gpu_list_is_empty(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)   # the package is not installed
    nvml = Nvml()
    assert not nvml.available
    assert nvml.gpus() == []
    assert nvml.call("nvmlDeviceGetCount") is None
    sample = Monitor().sample()
    assert sample.kind == "cpu" and sample.devices == []


def test_wrapper_turns_failures_into_none():
    import pynvml  # installed, but this machine has no libnvidia-ml

    nvml = Nvml()   # no driver on this machine: not available, and no exception
    nvml._lib = pynvml   # as if init had worked: every call now fails inside NVML
    assert nvml.call("nvmlDeviceGetCount") is None
    assert nvml.call("nvmlDeviceGetTemperature", None, 0) is None
    assert nvml.call("nvmlFunctionFromTheFuture") is None
    assert nvml.gpus() == []


def test_trainer_usage_includes_its_children():
    # The grandchild holds 200 MB and spins; the parent only sleeps.
    busy = ("import time\nheld = bytearray(200 * 1024 * 1024)\n"
            "end = time.time() + 30\nwhile time.time() < end: pass\n")
    parent = subprocess.Popen([sys.executable, "-c",
                               f"import subprocess, sys, time\n"
                               f"subprocess.Popen([sys.executable, '-c', {busy!r}])\n"
                               f"time.sleep(30)\n"])
    try:
        monitor = Monitor()
        monitor.set_trainer_pid(parent.pid)
        deadline = time.monotonic() + 10
        sample = monitor.sample()
        while sample.trainer_rss_mb < 200 and time.monotonic() < deadline:
            time.sleep(0.1)
            sample = monitor.sample()
        assert sample.trainer_rss_mb > 200
        time.sleep(0.3)
        assert monitor.sample().trainer_cpu_percent > 0   # measured since the last poll
        monitor.set_trainer_pid(None)
        assert monitor.sample().trainer_cpu_percent is None
    finally:
        for child in psutil.Process(parent.pid).children(recursive=True):
            child.kill()
        parent.kill()
        parent.wait()


def test_trainer_that_exited_reads_none():
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    monitor = Monitor()
    monitor.set_trainer_pid(done.pid)
    sample = monitor.sample()
    assert sample.trainer_cpu_percent is None and sample.trainer_rss_mb is None


def test_background_thread_samples_and_survives_a_failing_subscriber():
    samples: list[DeviceSample] = []
    got_three = threading.Event()

    def on_sample(sample):
        samples.append(sample)
        if len(samples) == 1:
            raise RuntimeError("subscriber bug")
        if len(samples) >= 3:
            got_three.set()

    monitor = Monitor(interval=0.05, on_sample=on_sample).start()
    try:
        assert got_three.wait(5)
        assert monitor.latest() is not None
    finally:
        monitor.stop()
    count = len(samples)
    time.sleep(0.2)
    assert len(samples) == count   # stopped means stopped


@pytest.mark.skipif(not Nvml().available, reason="no NVIDIA GPU on this machine")
def test_gpu_readings():
    nvml = Nvml()
    gpus = nvml.gpus()
    assert gpus and isinstance(gpus[0]["name"], str)
    assert 0 < gpus[0]["mem_used_mb"] <= gpus[0]["mem_total_mb"]
    assert Monitor().sample().kind == "gpu"
    nvml.shutdown()
