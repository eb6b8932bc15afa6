"""A research workspace: a git repository, apart from the tool, where experiments are commits.

`init` makes one from the templates, `adopt` turns an existing autoresearch-style checkout
into one. Experiments live on branch `autoresearch/<tag>`; pairlab's own state (config,
journal, logs) lives in `.pairlab/`, which git ignores. The settings are in
engine/workspace/config.py, the opened workspace and its git operations in
engine/workspace/repo.py; the rest of pairlab imports all of them from here.
"""

from __future__ import annotations

import ast
import datetime
import os
import shutil
from pathlib import Path

from engine.base.git import run_git
from engine.workspace.config import Config, WorkspaceError
from engine.workspace.repo import BASELINE_AUTHOR, Workspace, identity, is_workspace

BRANCH_PREFIX = "autoresearch/"

GITIGNORE = """\
# pairlab: journal, run logs and config
.pairlab/
# results are recorded by pairlab, not versioned (autoresearch keeps results.tsv untracked)
results.tsv
*.json
run.log
__pycache__/
"""

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")


def default_workspace_dir() -> Path:
    return Path(os.environ.get("PAIRLAB_WORKSPACE") or "~/pairlab-workspace").expanduser()


def default_tag(today: datetime.date | None = None) -> str:
    """Today's date the way autoresearch names its runs, e.g. 'nov22'."""
    today = today or datetime.date.today()
    return f"{_MONTHS[today.month - 1]}{today.day}"


def default_templates() -> dict[str, Path]:
    """Workspace file name -> template it is copied from."""
    import engine
    import nanochat

    return {
        "train.py": Path(nanochat.__file__).resolve().parent / "train.py",
        "program.md": Path(engine.__file__).resolve().parent.parent / "program.md",
    }


def init(directory: str | Path, tag: str | None = None,
         templates: dict[str, Path] | None = None) -> "Workspace":
    """Create a fresh workspace: templates copied, baseline committed, research branch out."""
    root = Path(directory).expanduser().resolve()
    if is_workspace(root):
        raise WorkspaceError(f"{root} is already a pairlab workspace: run `pairlab` in it")
    if root.exists() and not root.is_dir():
        raise WorkspaceError(f"{root} exists and is not a directory")
    if root.exists() and any(root.iterdir()):
        raise WorkspaceError(
            f"{root} is not empty and is not a pairlab workspace: choose a new or empty "
            f"directory, or, if it is an autoresearch-style git checkout, adopt it with "
            f"`pairlab init --adopt {directory}`")
    tag = check_tag(tag or default_tag())
    templates = default_templates() if templates is None else templates
    for name, source in templates.items():
        if not Path(source).is_file():
            raise WorkspaceError(
                f"template {source} for {name} is missing: the pairlab installation is "
                f"incomplete; reinstall it (pip install -e .)")

    root.mkdir(parents=True, exist_ok=True)
    for name, source in templates.items():
        shutil.copyfile(source, root / name)
    (root / ".gitignore").write_text(GITIGNORE)
    run_git(root, "init", "-q", "--initial-branch=main")
    run_git(root, "add", "--", ".gitignore", *templates)
    run_git(root, "commit", "-q", "--no-verify", "-m", "baseline", env=identity(BASELINE_AUTHOR))

    targets = [name for name in templates if name.endswith(".py")] or ["train.py"]
    return _become_workspace(root, Config(targets=targets, metric_source="result_file"), tag)


def open_or_init(directory: str | Path | None = None) -> "Workspace":
    """The workspace at directory (default: the default one), created on first use."""
    root = Path(directory).expanduser() if directory else default_workspace_dir()
    return Workspace.open(root) if is_workspace(root) else init(root)


def adopt(directory: str | Path, targets: list[str] | None = None,
          run_command: list[str] | None = None, metric_source: str = "summary_line",
          tag: str | None = None) -> "Workspace":
    """Make an existing git checkout (e.g. karpathy/autoresearch) a workspace.

    Nothing of theirs changes but `.git/info/exclude` (so `.pairlab/` stays untracked)
    and the new research branch, which starts at their HEAD.
    """
    root = Path(directory).expanduser().resolve()
    if is_workspace(root):
        raise WorkspaceError(f"{root} is already a pairlab workspace: run `pairlab` in it")
    top = run_git(root, "rev-parse", "--show-toplevel", check=False) if root.is_dir() else None
    if top is None:
        raise WorkspaceError(
            f"{root} is not a git repository; only a git checkout can be adopted "
            f"(or run `pairlab init` for a fresh workspace)")
    top_dir = Path(top.decode().strip()).resolve()
    if top_dir != root:
        raise WorkspaceError(
            f"{root} is inside the git repository {top_dir}; adopt its top "
            f"level directory instead")
    if run_git(root, "rev-parse", "--verify", "-q", "HEAD", check=False) is None:
        raise WorkspaceError(f"{root} has no commits yet; commit the target files first")
    tag = check_tag(tag or default_tag())
    config = Config(targets=list(targets or ["train.py"]), run_command=run_command,
                    metric_source=metric_source)
    tracked = set(run_git(root, "ls-tree", "-r", "--name-only", "HEAD").decode().splitlines())
    missing = [t for t in config.targets if t not in tracked]
    if missing:
        raise WorkspaceError(
            f"target {', '.join(missing)} is not a file committed in {root}; "
            f"commit it first or name the file the agent should edit")
    stated = stated_budget(root, tracked, config.targets)
    if stated is not None:
        config.budget_s, config.budget_from = stated

    git_dir = run_git(root, "rev-parse", "--absolute-git-dir").decode().strip()
    exclude = Path(git_dir) / "info" / "exclude"
    exclude.parent.mkdir(exist_ok=True)
    existing = exclude.read_text() if exclude.exists() else ""
    if ".pairlab/" not in existing.splitlines():
        prefix = "" if not existing or existing.endswith("\n") else "\n"
        exclude.write_text(existing + prefix + ".pairlab/\n")
    return _become_workspace(root, config, tag)


BUDGET_NAME = "TIME_BUDGET"   # autoresearch: `TIME_BUDGET = 300` in prepare.py, read by train.py


def stated_budget(root: Path, tracked: set[str], targets: list[str]) -> tuple[float, str] | None:
    """(seconds, "file NAME") where an adopted repo sets its training budget at module level.

    Their train.py trains for its own budget whatever pairlab passes, so the engine's budget
    (and the deadlines that follow from it) must be theirs. prepare.py first, where
    autoresearch keeps it, then the targets, then the other top-level Python files."""
    top_level = sorted(p for p in tracked if "/" not in p and p.endswith(".py"))
    order = ["prepare.py", *targets, *top_level]
    for name in dict.fromkeys(p for p in order if p in tracked):
        try:
            tree = ast.parse((root / name).read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for stmt in tree.body:
            if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
                    and isinstance(stmt.targets[0], ast.Name)
                    and stmt.targets[0].id == BUDGET_NAME
                    and isinstance(stmt.value, ast.Constant)
                    and isinstance(stmt.value.value, (int, float))
                    and not isinstance(stmt.value.value, bool) and stmt.value.value > 0):
                return float(stmt.value.value), f"{name} {BUDGET_NAME}"
    return None


def _become_workspace(root: Path, config: Config, tag: str) -> "Workspace":
    config.tag = _free_tag(root, tag)
    config.branch = BRANCH_PREFIX + config.tag
    run_git(root, "checkout", "-q", "-b", config.branch)
    pairlab_dir = root / ".pairlab"
    (pairlab_dir / "logs").mkdir(parents=True, exist_ok=True)
    config.save(pairlab_dir / "config.json")
    return Workspace(root, config)


def check_tag(tag: str) -> str:
    valid = run_git(Path.cwd(), "check-ref-format", "--branch", BRANCH_PREFIX + tag,
                    check=False) is not None
    if not valid or "/" in tag:
        raise WorkspaceError(f"tag {tag!r} cannot name the branch {BRANCH_PREFIX}{tag}; "
                             f"use letters, digits and dashes, e.g. 'nov22'")
    return tag


def _free_tag(root: Path, tag: str) -> str:
    """The tag itself if its branch is free, else tag-2, tag-3, ..."""
    taken = set(run_git(root, "for-each-ref", "--format=%(refname:short)",
                        "refs/heads").decode().splitlines())
    candidate, n = tag, 1
    while BRANCH_PREFIX + candidate in taken:
        n += 1
        candidate = f"{tag}-{n}"
    return candidate
