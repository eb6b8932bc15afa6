"""An opened workspace: its settings and the git operations the session needs.

Only the target files ever change between pairlab's commits, so moving the branch only
rewrites those files in the working tree, and a human's uncommitted edits to them are
stashed first, never lost. Every git operation goes through run_git.
"""

from __future__ import annotations

import datetime
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from engine.base.git import run_git
from engine.workspace.config import Config, WorkspaceError

BASELINE_AUTHOR = ("pairlab", "pairlab@localhost")
AGENT_AUTHOR = ("pairlab-agent", "agent@pairlab")
HUMAN_AUTHOR = ("pairlab-human", "human@pairlab")
PROGRAM_FILE = "program.md"
HUMAN_EDIT_TRAILER = "pairlab-edited-by: human"


@dataclass
class SavedChanges:
    """Uncommitted human edits that pairlab stashed before moving the branch."""

    paths: list[str]
    name: str            # the stash message, as `git stash list` shows it
    commit: str          # the stash commit: a stable handle even after later stashes


def is_workspace(directory: str | Path) -> bool:
    return (Path(directory).expanduser() / ".pairlab" / "config.json").is_file()


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
             env=identity(BASELINE_AUTHOR))
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
                       env=identity(author)).decode().strip()

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


def identity(who: tuple[str, str]) -> dict[str, str]:
    name, email = who
    return {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email,
            "GIT_COMMITTER_NAME": BASELINE_AUTHOR[0], "GIT_COMMITTER_EMAIL": BASELINE_AUTHOR[1]}
