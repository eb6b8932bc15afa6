"""A workspace's settings (.pairlab/config.json) and the error a user must fix."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path, PurePosixPath

from engine.base.devices import visible_gpus
from engine.base.errors import WorkspaceError  # noqa: F401  (the workspace's error)
from engine.base.records import KEEP_RULES

METRIC_SOURCES = ("result_file", "summary_line")




GPU_BUDGET_S = 300.0      # autoresearch's 5 minutes
CPU_BUDGET_S = 120.0      # a first judged experiment in ~6 minutes on a 2-core CPU


@dataclass
class Config:
    """Workspace settings, saved as .pairlab/config.json. Never holds secrets such as API keys."""

    targets: list[str] = field(default_factory=lambda: ["train.py"])
    run_command: list[str] | None = None      # None: [sys.executable, "train.py"]
    metric_source: str = "result_file"        # result_file | summary_line
    tag: str = ""
    branch: str = ""
    budget_s: float | None = None             # None: the device's default (training_budget)
    mode: str = "review"
    agent: str = "auto"                       # auto: claude if a key is set, else tuner
    drafts_ahead: int = 1
    noise_repeats: int = 2
    device: str | None = None                 # None: the harness picks
    speculate: bool = True                    # review mode: train the top proposal ahead
    slots: int | None = None                  # runs at once; None: one per visible GPU
    budget_from: str = ""                     # adopted: where the repo states its budget
    executor: str = "local"                   # local | ray (README: On a Ray cluster)
    ray_address: str | None = None            # None: the cluster this machine belongs to
    ray_resources: str | None = None          # per run, e.g. "num_cpus=1,num_gpus=0"
    ray_data_dir: str | None = None           # the data on a path the cluster shares
    ladder: list[int] | None = None           # promotion depths; None: the device's default
    keep_rule: str = "margin"                 # margin | sequential | debiased (docs/keep-rule.md)

    def __post_init__(self) -> None:
        if self.executor not in ("local", "ray"):
            raise WorkspaceError(f"executor is {self.executor!r}; it must be local or ray")
        if self.metric_source not in METRIC_SOURCES:
            raise WorkspaceError(
                f"metric_source is {self.metric_source!r}; it must be one of "
                f"{', '.join(METRIC_SOURCES)}")
        if not self.targets or not isinstance(self.targets, list):
            raise WorkspaceError("targets must be a list of at least one file, e.g. [\"train.py\"]")
        if self.run_command is not None and (
                not isinstance(self.run_command, list)
                or not all(isinstance(a, str) for a in self.run_command)):
            raise WorkspaceError(
                f"run_command must be a list of arguments, e.g. [\"uv\", \"run\", \"train.py\"]; "
                f"got {self.run_command!r}")
        for target in self.targets:
            check_relative_path(target)
        if self.keep_rule not in KEEP_RULES:
            raise WorkspaceError(f"keep_rule is {self.keep_rule!r}; it must be one of "
                                 f"{', '.join(KEEP_RULES)}")
        if self.ladder is not None:
            try:
                check_ladder(self.ladder)
            except ValueError as e:
                raise WorkspaceError(str(e)) from e

    def training_budget(self, device: str | None = None) -> float:
        """The training seconds per run: the configured budget, else the device's default.
        A quiet 2-core CPU judged its first experiment in 7.1 minutes at CPU_BUDGET_S (two
        runs with compile and evaluation on top; about 6 with the compile seed, README), where
        300 s and up-front noise repeats took 16;
        `device` None means the GPU default when an NVIDIA GPU is visible."""
        if self.budget_s is not None:
            return self.budget_s
        device = device or self.device or ("cuda" if visible_gpus() else "cpu")
        return CPU_BUDGET_S if device == "cpu" else GPU_BUDGET_S

    def command(self) -> list[str]:
        """The command that trains one experiment, run in the workspace root."""
        return list(self.run_command) if self.run_command else [sys.executable, "train.py"]

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "Config":
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise WorkspaceError(f"cannot read {path}: {e}") from e
        if not isinstance(data, dict):
            raise WorkspaceError(f"{path} must hold a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise WorkspaceError(
                f"{path} has unknown settings: {', '.join(unknown)}; "
                f"known ones are {', '.join(sorted(known))}")
        return cls(**data)


def check_relative_path(path: str) -> None:
    """A target path must be a plain relative path inside the workspace."""
    pure = PurePosixPath(path)
    if not path or pure.is_absolute() or "\\" in path or ".." in pure.parts \
            or str(pure) != path or path == ".":
        raise WorkspaceError(
            f"target {path!r} must be a relative path inside the workspace, like 'train.py'")


def check_ladder(ladder: object) -> None:
    """A ladder is a list of increasing positive depths; raises ValueError saying why not."""
    if not isinstance(ladder, list) or not ladder or not all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in ladder):
        raise ValueError(f"ladder must be a list of depths (positive whole numbers), e.g. "
                         f"[4, 8], or null for the default; got {ladder!r}")
    if any(b <= a for a, b in zip(ladder, ladder[1:])):
        raise ValueError(f"ladder must go up, each depth larger than the one before; got "
                         f"{ladder!r}")
