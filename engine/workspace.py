"""A research workspace: a git repository, apart from the tool, where experiments are commits.

`init` makes one from the templates, `adopt` turns an existing autoresearch-style checkout
into one. Experiments live on branch `autoresearch/<tag>`; pairlab's own state (config,
journal, logs) lives in `.pairlab/`, which git ignores. Only the target files ever change
between pairlab's commits, so moving the branch only rewrites those files in the working
tree, and a human's uncommitted edits to them are stashed first, never lost.
"""

from __future__ import annotations

import ast
import datetime
import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path, PurePosixPath

from git.cmd import Git

from engine import promotion

BASELINE_AUTHOR = ("pairlab", "pairlab@localhost")
AGENT_AUTHOR = ("pairlab-agent", "agent@pairlab")
HUMAN_AUTHOR = ("pairlab-human", "human@pairlab")
PROGRAM_FILE = "program.md"
BRANCH_PREFIX = "autoresearch/"
METRIC_SOURCES = ("result_file", "summary_line")
HUMAN_EDIT_TRAILER = "pairlab-edited-by: human"

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


class WorkspaceError(Exception):
    """Something about the workspace the user must fix; the message says how."""


@dataclass
class SavedChanges:
    """Uncommitted human edits that pairlab stashed before moving the branch."""

    paths: list[str]
    name: str            # the stash message, as `git stash list` shows it
    commit: str          # the stash commit: a stable handle even after later stashes


GPU_BUDGET_S = 300.0      # autoresearch's 5 minutes
CPU_BUDGET_S = 120.0      # a first judged experiment in ~7 minutes on a 2-core CPU


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
        if self.ladder is not None:
            try:
                promotion.check_ladder(self.ladder)
            except ValueError as e:
                raise WorkspaceError(str(e)) from e

    def training_budget(self, device: str | None = None) -> float:
        """The training seconds per run: the configured budget, else the device's default.
        A 2-core CPU judges its first experiment in about 7 minutes at CPU_BUDGET_S (two runs
        with compile and evaluation on top), where 300 s and up-front noise repeats took 16;
        `device` None means the GPU default when an NVIDIA GPU is visible."""
        if self.budget_s is not None:
            return self.budget_s
        from engine.slots import visible_gpus
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


def is_workspace(directory: str | Path) -> bool:
    return (Path(directory).expanduser() / ".pairlab" / "config.json").is_file()


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
    run_git(root, "commit", "-q", "--no-verify", "-m", "baseline", env=_identity(BASELINE_AUTHOR))

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


class Workspace:
    """An opened workspace: its settings and the git operations the session needs."""

    # Every git operation goes through run_git (a process per call): nothing shared
    # between threads.

    def __init__(self, root: Path, config: Config):
        self.root = Path(root)
        self.config = config

    @classmethod
    def open(cls, directory: str | Path) -> "Workspace":
        root = Path(directory).expanduser().resolve()
        if not is_workspace(root):
            raise WorkspaceError(
                f"{directory} is not a pairlab workspace: run `pairlab init {directory}`")
        if run_git(root, "rev-parse", "--git-dir", check=False) is None:
            raise WorkspaceError(f"{root} has .pairlab/ but is not a git repository")
        config = Config.load(root / ".pairlab" / "config.json")
        workspace = cls(root, config)
        workspace.logs_dir.mkdir(parents=True, exist_ok=True)
        return workspace

    @property
    def pairlab_dir(self) -> Path:
        return self.root / ".pairlab"

    @property
    def logs_dir(self) -> Path:
        return self.pairlab_dir / "logs"

    @property
    def config_path(self) -> Path:
        return self.pairlab_dir / "config.json"

    @property
    def branch(self) -> str:
        return self.config.branch

    # ---- reading history ----

    def head(self) -> str:
        """The commit the research branch points at."""
        return self.resolve(self.branch)

    def resolve(self, rev: str) -> str:
        return run_git(self.root, "rev-parse", "--verify", f"{rev}^{{commit}}").decode().strip()

    def parent_of(self, commit: str) -> str:
        return self.resolve(f"{commit}^")

    def file_at(self, commit: str, path: str) -> str:
        """Text of one file at a commit (UTF-8, exactly as committed)."""
        result = run_git(self.root, "cat-file", "blob", f"{commit}:{path}", check=False)
        if result is None:
            raise WorkspaceError(f"{path} does not exist at commit {commit[:12]}")
        try:
            return result.decode("utf-8")
        except UnicodeDecodeError as e:
            raise WorkspaceError(f"{path} at {commit[:12]} is not UTF-8 text") from e

    def files_at(self, commit: str, paths: list[str] | None = None) -> dict[str, str]:
        return {p: self.file_at(commit, p) for p in (paths or self.config.targets)}

    def mode_at(self, commit: str, path: str) -> str | None:
        """Git file mode of path at commit ('100644', '120000' for a symlink), None if absent."""
        listing = run_git(self.root, "ls-tree", commit, "--", path).decode()
        return listing.split(" ", 1)[0] if listing else None

    # ---- human edits ----

    def dirty_targets(self) -> list[str]:
        """Target files whose working-tree or staged content differs from HEAD."""
        status = run_git(self.root, "status", "--porcelain", "-z", "--", *self.config.targets)
        entries = [e for e in status.decode().split("\0") if e]
        return sorted({e[3:] for e in entries} & set(self.config.targets))

    def save_human_changes(self, reason: str = "pairlab moved the research branch"
                           ) -> "SavedChanges | None":
        """Stash uncommitted edits to target files so a branch move cannot lose them.

        Returns what was saved and under which stash name, or None when nothing was dirty.
        """
        dirty = self.dirty_targets()
        if not dirty:
            return None
        when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        name = f"pairlab: edits to {', '.join(dirty)} saved {when} before {reason}"
        run_git(self.root, "stash", "push", "-q", "-m", name, "--", *dirty,
             env=_identity(BASELINE_AUTHOR))
        commit = run_git(self.root, "rev-parse", "stash@{0}").decode().strip()
        return SavedChanges(paths=dirty, name=name, commit=commit)

    def program(self) -> str:
        """The research program the agent is given (program.md), empty if there is none."""
        path = self.root / PROGRAM_FILE
        return path.read_text(encoding="utf-8") if path.is_file() else ""

    @property
    def results_tsv_path(self) -> Path:
        return self.root / "results.tsv"

    def write_results_tsv(self, journal) -> Path:
        """autoresearch's results.tsv, rewritten from the journal (untracked by git)."""
        return journal.write_results_tsv(self.results_tsv_path)

    # ---- moving the research branch ----

    def commit_change(self, files: dict[str, str], message: str, parent: str,
                      author: tuple[str, str] = AGENT_AUTHOR, human: bool = False) -> str:
        """Commit the given target texts on top of parent and move the branch there."""
        commit = self.make_commit(files, message, parent, author, human)
        subject = (message.strip().splitlines() or ["a change"])[0]
        self.reset_to(commit, reason=f"committing '{subject}'")
        return commit

    def make_commit(self, files: dict[str, str], message: str, parent: str,
                    author: tuple[str, str] = AGENT_AUTHOR, human: bool = False) -> str:
        """Commit the given target texts on top of parent, moving no branch (a side commit).

        The commit is built in a temporary index, so nothing but the target files is
        touched. Machine-made commits carry AGENT_AUTHOR; human=True (a human edited the
        agent's patch) makes sure the message says so.
        """
        if human and HUMAN_EDIT_TRAILER not in message:
            message = message.rstrip("\n") + "\n\n" + HUMAN_EDIT_TRAILER + "\n"
        outside = sorted(set(files) - set(self.config.targets))
        if outside:
            raise WorkspaceError(f"{', '.join(outside)} is not a target file of this workspace")
        return self._commit_tree(files, message, parent, author)

    def commit_program(self, text: str, parent: str) -> str:
        """Commit the human's program.md on top of parent, as a human change, and move the
        branch there; the working tree's program.md is written too (git leaves it alone
        when the branch moves, as it is not a target)."""
        self.write_program(text)
        message = f"program.md edited by the human\n\n{HUMAN_EDIT_TRAILER}\n"
        commit = self._commit_tree({PROGRAM_FILE: text}, message, parent, HUMAN_AUTHOR)
        self.reset_to(commit, reason="committing the human's program.md")
        return commit

    def write_program(self, text: str) -> None:
        path = self.root / PROGRAM_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)

    def _commit_tree(self, files: dict[str, str], message: str, parent: str,
                     author: tuple[str, str]) -> str:
        """A commit of parent's tree with `files` replaced, built in a temporary index so
        the working tree and the real index are not touched."""
        parent = self.resolve(parent)
        with tempfile.TemporaryDirectory() as scratch:
            index_env = {"GIT_INDEX_FILE": str(Path(scratch) / "index")}
            run_git(self.root, "read-tree", parent, env=index_env)
            for path, text in files.items():
                blob = run_git(self.root, "hash-object", "-w", "--stdin",
                            input=text.encode("utf-8")).decode().strip()
                mode = self.mode_at(parent, path) or "100644"
                run_git(self.root, "update-index", "--add", "--cacheinfo", f"{mode},{blob},{path}",
                     env=index_env)
            tree = run_git(self.root, "write-tree", env=index_env).decode().strip()
        return run_git(self.root, "commit-tree", tree, "-p", parent, "-m", message,
                       env=_identity(author)).decode().strip()

    def reset_to(self, commit: str, reason: str = "") -> None:
        """Point the research branch at commit and make the target files match it.

        Human edits to target files are stashed first (see save_human_changes); other files
        in the working tree are left as they are.
        """
        self._require_on_branch()
        commit = self.resolve(commit)
        self.save_human_changes(reason or f"moving {self.branch} to {commit[:12]}")
        # mixed reset: branch and index follow the commit, the working tree is kept...
        run_git(self.root, "reset", "-q", "--mixed", commit)
        # ...then the targets, and only they, are rewritten from it
        run_git(self.root, "checkout", "-q", commit, "--", *self.config.targets)

    def _require_on_branch(self) -> None:
        head = run_git(self.root, "symbolic-ref", "-q", "--short", "HEAD", check=False)
        current_branch = head.decode().strip() if head is not None else None
        if current_branch != self.branch:
            current = f"branch {current_branch}" if current_branch else "a detached HEAD"
            raise WorkspaceError(
                f"{self.root} is on {current}, but pairlab runs experiments on {self.branch}: "
                f"run `git -C {self.root} checkout {self.branch}`")


def _identity(who: tuple[str, str]) -> dict[str, str]:
    name, email = who
    return {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email,
            "GIT_COMMITTER_NAME": BASELINE_AUTHOR[0], "GIT_COMMITTER_EMAIL": BASELINE_AUTHOR[1]}


def run_git(root: Path, *args: str, input: bytes | None = None,
            env: dict[str, str] | None = None, check: bool = True) -> bytes | None:
    """Run git in root through GitPython's command layer (a fresh process per call, so any
    thread may call it); stdout as bytes. With check=False a failure returns None."""
    with tempfile.TemporaryFile() as stdin:
        if input is not None:
            stdin.write(input)
            stdin.seek(0)
        status, stdout, stderr = Git(root).execute(
            ["git", *args], istream=stdin if input is not None else None, env=env,
            with_extended_output=True, with_exceptions=False, stdout_as_string=False,
            strip_newline_in_stdout=False)
    if status != 0:
        if not check:
            return None
        raise WorkspaceError(f"git {' '.join(args)} failed in {root}: {stderr.strip()}")
    return stdout
