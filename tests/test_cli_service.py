"""The service commands of the CLI when no engine runs: each says so, and how to start one."""

from __future__ import annotations

import pytest

from engine.cli import main
from engine.workspace import init


@pytest.mark.parametrize("command", [["attach"], ["attach", "--read-only"], ["status"], ["stop"]])
def test_without_an_engine_the_command_says_how_to_start_one(tmp_path, capsys, command):
    workspace = init(tmp_path / "ws", tag="test")
    assert main([*command, "--workspace", str(workspace.root)]) == 2
    err = capsys.readouterr().err
    assert err == (f"pairlab: no engine is running for {workspace.root}; start one with "
                   f"`pairlab --workspace {workspace.root}`\n")


def test_attach_to_a_directory_that_is_no_workspace_says_so(tmp_path, capsys):
    assert main(["attach", "--workspace", str(tmp_path / "nothing")]) == 2
    assert "pairlab: " in capsys.readouterr().err
