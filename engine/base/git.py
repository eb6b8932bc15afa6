"""git, run through GitPython's command layer: a fresh process per call, so any thread may
call it. The one way pairlab runs git."""

from __future__ import annotations

import tempfile
from pathlib import Path

from git.cmd import Git

from engine.base.errors import WorkspaceError


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
