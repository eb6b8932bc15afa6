"""The service commands of the CLI when no engine runs: each says so, and how to start one."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.workspace import init
from pairlab.cli import build_parser, main


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


@pytest.mark.parametrize("command", ["headless", "attach", "status", "stop", "report", "web"])
def test_flags_before_the_command_are_kept_and_the_commands_own_win(command):
    parser = build_parser()
    args = parser.parse_args(["--workspace", "/w/before", command])
    assert args.workspace == Path("/w/before")
    args = parser.parse_args(["--workspace", "/w/before", command, "--workspace", "/w/after"])
    assert args.workspace == Path("/w/after")
    if command in ("headless", "web"):
        args = parser.parse_args(["--budget", "40", "--agent", "tuner", "--no-speculate", command])
        assert (args.budget, args.agent, args.speculate) == (40.0, "tuner", False)
        args = parser.parse_args([command])
        assert (args.budget, args.agent, args.speculate) == (None, "auto", None)


def test_every_command_says_what_it_does_with_an_example_in_the_order_a_user_meets_them(
        capsys):
    from pairlab.cli import COMMANDS
    with pytest.raises(SystemExit):
        main(["--help"])
    listing = capsys.readouterr().out
    names = [name for name, _, _ in COMMANDS]
    assert names[:3] == ["doctor", "init", "prepare"]
    assert sorted(names, key=lambda name: listing.index(f"\n    {name} ")) == names
    for name in names:
        with pytest.raises(SystemExit):
            main([name, "--help"])
        text = capsys.readouterr().out
        assert f"example:\n  pairlab {name}" in text, name
