"""Patches: the engine computes, checks and applies them; it never trusts a diff from a model.

A change is `dict[path, new full text]`. `validate_change` refuses anything outside the policy
(targets only, no path tricks, text only, protected block untouched) and returns the unified
diff the engine computed, checked with unidiff and `git apply --check` against the base
commit. Every refusal names the file, the rule and the lines, because it goes back to the
agent and to the user verbatim.
"""

from __future__ import annotations

import difflib
import os
import re
import subprocess
import tempfile
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Callable

import unidiff

from engine.base.git import run_git
from engine.base.protected import PROTECTED_BEGIN, PROTECTED_END

if TYPE_CHECKING:
    from engine.workspace import Workspace

# The one definition of the fence around train.py's hand-off (the template, the tuner, the
# tests import these). The harness and the evaluator never need them.

DEV_NULL = "/dev/null"
SYMLINK_MODE = "120000"
# patch header lines that mean something other than a content edit of an existing file
_FORBIDDEN_HEADERS = {
    "rename from": "rename", "rename to": "rename", "copy from": "rename", "copy to": "rename",
    "similarity index": "rename", "old mode": "mode-change", "new mode": "mode-change",
    "new file mode": "add-or-delete", "deleted file mode": "add-or-delete",
    "GIT binary patch": "binary", "Binary files": "binary",
}


class PatchRefused(Exception):
    """A change the policy does not allow. `rule` is a short stable name, `message` says
    which file and lines, and what to do instead."""

    def __init__(self, rule: str, message: str):
        super().__init__(f"patch refused ({rule}): {message}")
        self.rule = rule
        self.message = message


# ---- computing diffs ----

def split_lines(text: str) -> list[str]:
    """Lines with their '\\n' kept; unlike str.splitlines, only '\\n' ends a line (as in git)."""
    lines = [line + "\n" for line in text.split("\n")]
    lines[-1] = lines[-1][:-1]
    return lines if lines[-1] else lines[:-1]


def unified_diff(old: dict[str, str], new: dict[str, str], context: int = 3) -> str:
    """Git-style unified diff (a/ and b/ prefixes) from old to new texts, files in order."""
    chunks = []
    for path in sorted(new):
        before, after = old.get(path, ""), new[path]
        if before == after:
            continue
        chunks.append(f"diff --git a/{path} b/{path}\n")
        body = difflib.unified_diff(split_lines(before), split_lines(after),
                                    f"a/{path}", f"b/{path}", n=context)
        for line in body:
            if not line.endswith("\n"):       # the file's last line, without its newline
                line += "\n\\ No newline at end of file\n"
            chunks.append(line)
    return "".join(chunks)


# ---- the policy ----

def check_path(path: str, targets: list[str]) -> None:
    pure = PurePosixPath(path)
    if pure.is_absolute() or re.match(r"^[A-Za-z]:[\\/]", path):
        raise PatchRefused("absolute-path",
                           f"{path!r} is an absolute path; name a target file relative to the "
                           f"workspace: {', '.join(targets)}")
    if ".." in pure.parts or ".." in path.split("\\"):
        raise PatchRefused("path-traversal",
                           f"{path!r} climbs out of the workspace with '..'; only these files "
                           f"may change: {', '.join(targets)}")
    if path not in targets:
        raise PatchRefused("not-a-target",
                           f"{path!r} is not a target file; only these files may change: "
                           f"{', '.join(targets)}")


def check_text(path: str, text: str) -> None:
    if "\0" in text:
        line = text[:text.index("\0")].count("\n") + 1
        raise PatchRefused("binary", f"{path}: line {line} contains a NUL byte; only text "
                                     f"changes are allowed")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        line = text[:e.start].count("\n") + 1
        raise PatchRefused("binary", f"{path}: line {line} is not valid UTF-8 text") from e


def protected_span(lines: list[str]) -> tuple[int, int] | None:
    """0-based (begin, end) line indices of the fence, inclusive; None if there is no fence.

    Raises ValueError naming what is wrong when the markers are not exactly one pair in order.
    """
    begins = [i for i, line in enumerate(lines) if line.strip() == PROTECTED_BEGIN]
    ends = [i for i, line in enumerate(lines) if line.strip() == PROTECTED_END]
    if not begins and not ends:
        return None
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        where = ", ".join(f"line {i + 1}" for i in sorted(begins + ends)) or "nowhere"
        raise ValueError(f"found {len(begins)} begin and {len(ends)} end marker(s) ({where}); "
                         f"there must be exactly one begin line followed by one end line")
    return begins[0], ends[0]


def check_protected(path: str, old: str, new: str) -> None:
    """The fenced block must come through byte-identical, exactly once. If the original has
    no fence (an adopted autoresearch repo) there is nothing to protect."""
    old_lines, new_lines = split_lines(old), split_lines(new)
    try:
        span = protected_span(old_lines)
    except ValueError as e:
        raise PatchRefused("protected",
                           f"{path}: the protected block at the base commit is malformed: {e}. "
                           f"Restore the fence lines from the template before going on") from e
    if span is None:
        return
    begin, end = span
    block = old_lines[begin:end + 1]
    where = f"the protected block is lines {begin + 1}-{end + 1} of {path}"
    try:
        new_span = protected_span(new_lines)
    except ValueError as e:
        raise PatchRefused("protected", f"{path}: the protected fence was changed: {e}; "
                                        f"{where}, keep it as it is") from e
    if new_span is not None and new_lines[new_span[0]:new_span[1] + 1] == block:
        return
    touched = _touched_lines(old_lines, new_lines, begin, end)
    detail = f"the change touches line(s) {touched}" if touched \
        else "the block no longer appears byte-identical exactly once"
    raise PatchRefused("protected",
                       f"{path}: {where} (from '{PROTECTED_BEGIN[:30]}...' to "
                       f"'{PROTECTED_END}'); {detail}. Those lines must stay byte-for-byte "
                       f"as they are: change only code outside the block")


def _touched_lines(old_lines: list[str], new_lines: list[str], begin: int, end: int) -> str:
    """Old-file line numbers inside [begin, end] that the edit removes, replaces or splits."""
    matcher = difflib.SequenceMatcher(None, old_lines, new_lines, autojunk=False)
    touched: list[int] = []
    for op, i1, i2, _, _ in matcher.get_opcodes():
        if op == "equal":
            continue
        if i1 == i2 and begin < i1 <= end:          # insertion between two fenced lines
            touched.append(i1)
        touched.extend(i for i in range(max(i1, begin), min(i2, end + 1)))
    numbers = sorted({i + 1 for i in touched})
    return _ranges(numbers)


def _ranges(numbers: list[int]) -> str:
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def check_change(change: dict[str, str], base: dict[str, str], targets: list[str],
                 root: Path | None = None) -> None:
    """The policy on a change of full texts; base holds each changed file's original text."""
    if not change:
        raise PatchRefused("empty", "the change names no file; edit one of: "
                                    f"{', '.join(targets)}")
    for path in change:
        check_path(path, targets)
        if root is not None and _symlink_on_path(root, path):
            raise PatchRefused("symlink", f"{path} is a symbolic link in the workspace; "
                                          f"pairlab only edits regular files")
        check_text(path, change[path])
    if all(change[p] == base[p] for p in change):
        raise PatchRefused("empty", f"the change leaves {', '.join(sorted(change))} exactly as "
                                    f"it is; make an actual edit")
    for path in change:
        check_protected(path, base[path], change[path])


def _symlink_on_path(root: Path, path: str) -> bool:
    current = Path(root)
    for part in PurePosixPath(path).parts:
        current = current / part
        if current.is_symlink():
            return True
    return False


# ---- checking a diff ----

def check_diff(diff: str, targets: list[str]) -> dict[str, int]:
    """Parse a unified diff with unidiff and apply the policy to its headers.

    Returns {path: strip level} for each file it edits (1 for a/ b/ prefixes, else 0).
    """
    if "\0" in diff:
        line = diff[:diff.index("\0")].count("\n") + 1
        raise PatchRefused("binary", f"line {line} of the diff contains a NUL byte; only text "
                                     f"changes are allowed")
    section = "the diff"
    for line in diff.split("\n"):
        if line.startswith("diff --git "):
            section = f"the diff of {line[len('diff --git '):]}"
        for header, rule in _FORBIDDEN_HEADERS.items():
            if line.startswith(header):
                raise PatchRefused(rule, f"{section} has '{line.strip()}': only edits to the "
                                         f"content of existing target files are allowed "
                                         f"({', '.join(targets)})")
    try:
        patch = unidiff.PatchSet(diff)
    except unidiff.UnidiffParseError as e:
        raise PatchRefused("malformed", f"the diff cannot be parsed: {e}") from e
    if not patch:
        raise PatchRefused("empty", "the diff edits no file; give a unified diff of one of: "
                                    f"{', '.join(targets)}")
    files: dict[str, int] = {}
    for patched in patch:
        source, target = _unquote(patched.source_file), _unquote(patched.target_file)
        if DEV_NULL in (source, target):
            raise PatchRefused("add-or-delete",
                               f"the diff {'creates' if source == DEV_NULL else 'deletes'} "
                               f"{target if source == DEV_NULL else source}; only existing "
                               f"target files may be edited ({', '.join(targets)})")
        strip = 1 if source.startswith("a/") and target.startswith("b/") else 0
        source_path, target_path = source[2 * strip:], target[2 * strip:]
        if source_path != target_path:
            raise PatchRefused("rename", f"the diff turns {source_path} into {target_path}; "
                                         f"renames are not allowed, edit a file in place")
        if patched.is_binary_file:
            raise PatchRefused("binary", f"{target_path}: binary changes are not allowed")
        check_path(target_path, targets)
        if target_path in files:
            raise PatchRefused("malformed", f"the diff edits {target_path} twice; give one "
                                            f"section per file")
        files[target_path] = strip
    return files


def _unquote(name: str) -> str:
    return name[1:-1] if len(name) > 1 and name[0] == name[-1] == '"' else name


def git_apply_check(root: Path, base_commit: str, diff: str) -> None:
    """`git apply --check` against base_commit in a temporary index: the working tree and
    the repository's own index are never touched."""
    with tempfile.TemporaryDirectory() as scratch:
        env = {"GIT_INDEX_FILE": str(Path(scratch) / "index")}
        run_git(root, "read-tree", base_commit, env=env)
        result = subprocess.run(["git", "apply", "--check", "--cached", "--whitespace=nowarn",
                                 "-"], cwd=root, input=diff.encode("utf-8"),
                                env={**os.environ, **env}, capture_output=True)
    if result.returncode != 0:
        raise PatchRefused("does-not-apply",
                           f"the diff does not apply to {base_commit[:12]}: "
                           f"{_git_message(result.stderr)}")


def _git_message(stderr: bytes) -> str:
    return " ".join(stderr.decode("utf-8", errors="replace").split())


# ---- against a workspace ----

def validate_change(workspace: "Workspace", base_commit: str,
                    base_files: dict[str, str] | None, change: dict[str, str]) -> str:
    """Check a change of full texts against the workspace at base_commit; return its diff.

    base_files (the targets' texts at base_commit) saves reading them again; files it lacks
    are read from git. The change may repeat unchanged files: only differences count.
    """
    targets = workspace.config.targets
    for path in change:
        check_path(path, targets)
        _check_not_symlink_in_repo(workspace, base_commit, path)
    base_files = base_files or {}
    base = {p: base_files[p] if p in base_files else workspace.file_at(base_commit, p)
            for p in change}
    check_change(change, base, targets, workspace.root)
    diff = unified_diff(base, change)
    touched = set(check_diff(diff, targets))
    changed = {p for p in change if change[p] != base[p]}
    if touched != changed:
        raise PatchRefused("malformed", f"the computed diff edits {sorted(touched)} but the "
                                        f"change edits {sorted(changed)}")
    git_apply_check(workspace.root, base_commit, diff)
    return diff


def validator(workspace: "Workspace",
              base_commit: str) -> Callable[[dict[str, str]], str | None]:
    """DraftContext.validate: None when acceptable, else the refusal message for the model."""
    base_files = workspace.files_at(base_commit)

    def validate(change: dict[str, str]) -> str | None:
        try:
            validate_change(workspace, base_commit, base_files, change)
        except PatchRefused as refusal:
            return str(refusal)
        return None
    return validate


def parse_user_diff(workspace: "Workspace", base_commit: str,
                    diff: str | bytes) -> dict[str, str]:
    """Turn a unified diff written by a human (git-style or plain -p0) into new full texts.

    The diff is applied with `git apply` to scratch copies of the files at base_commit,
    and the result goes through the same policy as an agent's change.
    """
    if isinstance(diff, bytes):
        try:
            diff = diff.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PatchRefused("binary", f"the diff is not UTF-8 text (byte {e.start})") from e
    targets = workspace.config.targets
    files = check_diff(diff, targets)
    for path in files:
        _check_not_symlink_in_repo(workspace, base_commit, path)
    base = workspace.files_at(base_commit, list(files))
    strip = set(files.values())
    if len(strip) != 1:
        raise PatchRefused("malformed", "the diff mixes a/ b/ prefixed and plain file names; "
                                        "use one style")
    with tempfile.TemporaryDirectory() as scratch:
        scratch_root = Path(scratch)
        run_git(scratch_root, "init", "-q")
        for path, text in base.items():
            (scratch_root / path).parent.mkdir(parents=True, exist_ok=True)
            (scratch_root / path).write_bytes(text.encode("utf-8"))
        result = subprocess.run(["git", "apply", f"-p{strip.pop()}", "--whitespace=nowarn", "-"],
                                cwd=scratch_root, input=diff.encode("utf-8"),
                                capture_output=True)
        if result.returncode != 0:
            raise PatchRefused("does-not-apply",
                               f"the diff does not apply to {base_commit[:12]}: "
                               f"{_git_message(result.stderr)}")
        change = {}
        for path in files:
            try:
                change[path] = (scratch_root / path).read_bytes().decode("utf-8")
            except UnicodeDecodeError as e:
                raise PatchRefused("binary", f"{path}: the result is not UTF-8 text") from e
    check_change(change, base, targets, workspace.root)
    return change


def _check_not_symlink_in_repo(workspace: "Workspace", commit: str, path: str) -> None:
    if workspace.mode_at(commit, path) == SYMLINK_MODE:
        raise PatchRefused("symlink", f"{path} is a symbolic link at {commit[:12]}; pairlab only "
                                      f"edits regular files")


# ---- moving a proposal to a newer base ----

def rebase(change: dict[str, str], old_base: dict[str, str],
           new_base: dict[str, str]) -> dict[str, str] | None:
    """Three-way merge of each changed file from old_base onto new_base (git merge-file).

    Returns the rebased texts, or None if any file conflicts.
    """
    rebased = {}
    with tempfile.TemporaryDirectory() as scratch:
        for path, text in change.items():
            ours, base, theirs = (Path(scratch) / name for name in ("ours", "base", "theirs"))
            ours.write_bytes(text.encode("utf-8"))
            base.write_bytes(old_base[path].encode("utf-8"))
            theirs.write_bytes(new_base[path].encode("utf-8"))
            result = subprocess.run(["git", "merge-file", "-p", str(ours), str(base), str(theirs)],
                                    capture_output=True)
            if result.returncode != 0:      # >0: number of conflicts, <0: error
                return None
            rebased[path] = result.stdout.decode("utf-8")
    return rebased
