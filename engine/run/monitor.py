"""Device status, the nvitop way: a background thread takes a snapshot at a fixed interval
under a lock, readers only ever look at the latest one, and every NVML call goes through
one wrapper that turns "not supported", a missing driver or library, or a lost GPU into
None ("n/a") instead of an exception. Without a GPU, CPU and memory come from psutil; the
training process's own CPU and memory (with its children) are read when its pid is known.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import psutil

from engine.base.events import DeviceSample

log = logging.getLogger(__name__)

MB = 1024 * 1024


def _or_none(fn, *args):
    """fn(*args), or None when it fails for any reason: status readings are best effort."""
    try:
        return fn(*args)
    except Exception:
        return None


def _lifetime_cpu_percent(proc: psutil.Process) -> float | None:
    """A process seen for the first time: its average since it started (psutil's
    cpu_percent answers 0.0 on a first call); this call also sets the baseline for the next."""
    times = _or_none(proc.cpu_times)
    created = _or_none(proc.create_time)
    if times is None or created is None or _or_none(proc.cpu_percent, None) is None:
        return None
    return 100 * (times.user + times.system) / max(time.time() - created, 0.01)


class Nvml:
    """NVML (nvidia-ml-py) if a driver answers; `available` is False otherwise."""

    def __init__(self):
        self._lib = None
        try:
            import pynvml
            pynvml.nvmlInit()
        except Exception:   # no package, no libnvidia-ml, no driver, no GPU
            return
        self._lib = pynvml

    @property
    def available(self) -> bool:
        return self._lib is not None

    def call(self, name: str, *args):
        """The NVML function `name` applied to args, or None if NVML cannot answer."""
        fn = getattr(self._lib, name, None)   # None too for functions an old binding lacks
        return _or_none(fn, *args) if fn is not None else None

    def gpus(self) -> list[dict]:
        devices = []
        for index in range(self.call("nvmlDeviceGetCount") or 0):
            handle = self.call("nvmlDeviceGetHandleByIndex", index)
            name = self.call("nvmlDeviceGetName", handle)
            utilization = self.call("nvmlDeviceGetUtilizationRates", handle)
            memory = self.call("nvmlDeviceGetMemoryInfo", handle)
            power_mw = self.call("nvmlDeviceGetPowerUsage", handle)
            devices.append({
                "index": index,
                "name": name.decode(errors="replace") if isinstance(name, bytes) else name,
                "util": utilization.gpu if utilization is not None else None,
                "mem_used_mb": memory.used / MB if memory is not None else None,
                "mem_total_mb": memory.total / MB if memory is not None else None,
                "temp_c": self.call("nvmlDeviceGetTemperature", handle,
                                    getattr(self._lib, "NVML_TEMPERATURE_GPU", 0)),
                "power_w": power_mw / 1000 if power_mw is not None else None,
            })
        return devices

    def shutdown(self) -> None:
        if self._lib is not None:
            self.call("nvmlShutdown")
            self._lib = None


class Monitor:
    """Samples every `interval` seconds in a daemon thread once started; `on_sample` gets
    each DeviceSample on that thread and must not block."""

    def __init__(self, interval: float = 1.0,
                 on_sample: Callable[[DeviceSample], None] | None = None):
        self.interval = interval
        self.on_sample = on_sample
        self._lock = threading.Lock()        # guards the latest sample and the trainer pid
        self._poll_lock = threading.Lock()   # polls never overlap, whoever asks
        self._latest: DeviceSample | None = None
        self._trainer_pid: int | None = None
        self._processes: dict[int, psutil.Process] = {}   # keep cpu_percent baselines
        self._nvml: Nvml | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        _or_none(psutil.cpu_percent, None)   # the first reading only sets the baseline

    def start(self) -> "Monitor":
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="device-monitor", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, 2 * self.interval))
        with self._poll_lock:
            if self._nvml is not None:
                self._nvml.shutdown()

    def latest(self) -> DeviceSample | None:
        with self._lock:
            return self._latest

    def set_trainer_pid(self, pid: int | None) -> None:
        with self._lock:
            self._trainer_pid = pid

    def sample(self) -> DeviceSample:
        """Take one snapshot now (the thread calls this; so may anyone who cannot wait)."""
        with self._poll_lock:
            if self._nvml is None:
                self._nvml = Nvml()   # first call, not the constructor: init can take a while
            gpus = self._nvml.gpus()
            memory = _or_none(psutil.virtual_memory)
            with self._lock:
                pid = self._trainer_pid
            trainer_cpu, trainer_rss_mb = self._trainer_usage(pid) if pid is not None else (None, None)
            sample = DeviceSample(
                kind="gpu" if gpus else "cpu",
                devices=gpus,
                cpu_percent=_or_none(psutil.cpu_percent, None),
                ram_used_mb=(memory.total - memory.available) / MB if memory is not None else None,
                ram_total_mb=memory.total / MB if memory is not None else None,
                trainer_cpu_percent=trainer_cpu,
                trainer_rss_mb=trainer_rss_mb,
            )
            with self._lock:
                self._latest = sample
            return sample

    def _trainer_usage(self, pid: int) -> tuple[float | None, float | None]:
        """CPU % (can exceed 100 with several cores) and RSS of the process and its children."""
        root = self._processes.get(pid)
        if root is None or not _or_none(root.is_running):
            root = _or_none(psutil.Process, pid)
        if root is None:
            return None, None
        cpu, rss, seen = 0.0, 0, {}
        for proc in [root] + (_or_none(root.children, True) or []):
            known = self._processes.get(proc.pid)
            proc_cpu = _or_none(known.cpu_percent, None) if known else _lifetime_cpu_percent(proc)
            proc_memory = _or_none(proc.memory_info)
            if proc_cpu is None or proc_memory is None:
                continue   # exited between the listing and the reading
            cpu += proc_cpu
            rss += proc_memory.rss
            seen[proc.pid] = known or proc
        self._processes = seen
        if pid not in seen:
            return None, None
        return cpu, rss / MB

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            sample = self.sample()
            if self.on_sample is not None:
                try:
                    self.on_sample(sample)
                except Exception:   # a failing subscriber must not end monitoring
                    log.exception("device sample subscriber failed")
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))
