"""Workspaces on real git repositories in temporary directories."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine import workspace as ws_module
from engine.workspace import (AGENT_AUTHOR, CPU_BUDGET_S, GPU_BUDGET_S, Config, Workspace,
                              WorkspaceError, adopt, default_tag, default_workspace_dir, init,
                              is_workspace)

TRAIN = "import torch\nLR = 0.04  # learning rate\nprint('training')\n"
PROGRAM = "# program\nMake val_bpb go down.\n"


def git(root, *args):
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture
def templates(tmp_path):
    source = tmp_path / "templates"
    source.mkdir()
    (source / "train.py").write_text(TRAIN)
    (source / "program.md").write_text(PROGRAM)
    return {"train.py": source / "train.py", "program.md": source / "program.md"}


@pytest.fixture
def ws(tmp_path, templates):
    return init(tmp_path / "ws", tag="test", templates=templates)


def test_init_commits_baseline_on_research_branch(tmp_path, templates):
    ws = init(tmp_path / "new" / "ws", tag="nov22", templates=templates)
    root = ws.root
    assert (root / "train.py").read_text() == TRAIN
    assert (root / "program.md").read_text() == PROGRAM
    assert ".pairlab/" in (root / ".gitignore").read_text()
    assert git(root, "rev-parse", "--abbrev-ref", "HEAD") == "autoresearch/nov22"
    assert git(root, "log", "--format=%s|%an|%ae") == "baseline|pairlab|pairlab@localhost"
    assert sorted(git(root, "ls-files").split()) == [".gitignore", "program.md", "train.py"]
    assert git(root, "status", "--porcelain") == ""        # .pairlab/ is ignored
    assert ws.config.branch == "autoresearch/nov22" and ws.config.targets == ["train.py"]
    assert ws.head() == git(root, "rev-parse", "HEAD")
    assert ws.logs_dir.is_dir() and ws.pairlab_dir == root / ".pairlab"


def test_init_refuses_a_non_empty_directory_and_an_existing_workspace(tmp_path, templates, ws):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(WorkspaceError, match="not empty and is not a pairlab workspace"):
        init(busy, templates=templates)
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]
    with pytest.raises(WorkspaceError, match="already a pairlab workspace"):
        init(ws.root, templates=templates)


def test_init_refuses_a_tag_git_cannot_use_before_writing_anything(tmp_path, templates):
    with pytest.raises(WorkspaceError, match="tag 'bad tag..' cannot name the branch"):
        init(tmp_path / "ws", tag="bad tag..", templates=templates)
    assert not (tmp_path / "ws").exists()


def test_init_names_a_missing_template(tmp_path, templates):
    templates["program.md"] = tmp_path / "nowhere" / "program.md"
    with pytest.raises(WorkspaceError, match=r"template .*program\.md.* is missing"):
        init(tmp_path / "ws", templates=templates)
    assert not (tmp_path / "ws").exists()


def test_default_templates_point_into_the_package():
    paths = ws_module.default_templates()
    assert paths["train.py"].parent.name == "nanochat"
    assert paths["program.md"].parent == Path(ws_module.__file__).resolve().parents[2]


def test_default_tag_and_directory(monkeypatch, tmp_path):
    import datetime
    assert default_tag(datetime.date(2025, 11, 22)) == "nov22"
    monkeypatch.setenv("PAIRLAB_WORKSPACE", str(tmp_path / "here"))
    assert default_workspace_dir() == tmp_path / "here"
    monkeypatch.delenv("PAIRLAB_WORKSPACE")
    assert default_workspace_dir() == Path.home() / "pairlab-workspace"


def test_open_reads_the_workspace_and_explains_what_is_not_one(tmp_path, ws):
    opened = Workspace.open(ws.root)
    assert opened.config == ws.config and opened.root == ws.root
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(WorkspaceError) as e:
        Workspace.open(plain)
    assert str(e.value) == f"{plain} is not a pairlab workspace: run `pairlab init {plain}`"


def test_config_round_trip_never_writes_a_key(tmp_path, monkeypatch, templates):
    secret = "sk-ant-test-0123456789abcdef"
    monkeypatch.setenv("ANTHROPIC_API_KEY", secret)
    ws = init(tmp_path / "ws", tag="t", templates=templates)
    ws.config.budget_s = 5.0
    ws.config.run_command = ["uv", "run", "train.py"]
    ws.config.device = "cpu"
    ws.config.save(ws.config_path)
    assert Workspace.open(ws.root).config == ws.config
    stored = ws.config_path.read_text()
    assert secret not in stored and "key" not in stored.lower()
    assert Config().command() == [sys.executable, "train.py"]
    assert ws.config.command() == ["uv", "run", "train.py"]


def test_config_rejects_unknown_settings_and_bad_values(ws):
    data = json.loads(ws.config_path.read_text())
    ws.config_path.write_text(json.dumps({**data, "api_key": "sk-x"}))
    with pytest.raises(WorkspaceError, match="unknown settings: api_key"):
        Workspace.open(ws.root)
    with pytest.raises(WorkspaceError, match="metric_source"):
        Config(metric_source="stdout")
    with pytest.raises(WorkspaceError, match="relative path"):
        Config(targets=["../train.py"])
    with pytest.raises(WorkspaceError, match="keep_rule is 'bayes'; it must be one of margin, "
                                             "sequential"):
        Config(keep_rule="bayes")


def test_the_configured_keep_rule_reaches_the_session():
    from pairlab.cli import build_parser, settings_from_args
    parsed = build_parser().parse_args([])
    assert settings_from_args(parsed, Config()).keep_rule == "margin"
    assert settings_from_args(parsed, Config(keep_rule="sequential")).keep_rule == "sequential"


def make_autoresearch_clone(root: Path) -> Path:
    root.mkdir()
    (root / "train.py").write_text(TRAIN)
    (root / "prepare.py").write_text("# data\n")
    (root / "program.md").write_text(PROGRAM)
    git(root, "init", "-q", "--initial-branch=master")
    git(root, "add", ".")
    git(root, "-c", "user.name=k", "-c", "user.email=k@x", "commit", "-q", "-m", "initial")
    git(root, "branch", "autoresearch/mar5")
    return root


def test_adopt_changes_nothing_of_theirs(tmp_path):
    root = make_autoresearch_clone(tmp_path / "autoresearch")
    before = git(root, "rev-parse", "HEAD")
    ws = adopt(root, run_command=["uv", "run", "train.py"], tag="mar5")
    assert ws.config.branch == "autoresearch/mar5-2"            # mar5 was taken
    assert git(root, "rev-parse", "--abbrev-ref", "HEAD") == "autoresearch/mar5-2"
    assert ws.head() == before and git(root, "rev-parse", "master") == before
    assert git(root, "status", "--porcelain") == ""
    assert ".pairlab/" in (root / ".git" / "info" / "exclude").read_text().splitlines()
    assert ws.config.metric_source == "summary_line"
    assert Workspace.open(root).config.run_command == ["uv", "run", "train.py"]


def test_adopt_reads_the_budget_their_repo_states(tmp_path):
    root = make_autoresearch_clone(tmp_path / "autoresearch")
    (root / "prepare.py").write_text("# data\nMAX_SEQ_LEN = 2048\nTIME_BUDGET = 300  # seconds\n")
    git(root, "commit", "-qam", "budget")
    ws = adopt(root)
    assert (ws.config.budget_s, ws.config.budget_from) == (300.0, "prepare.py TIME_BUDGET")
    assert Workspace.open(root).config.budget_s == 300.0


def test_adopt_without_a_stated_budget_keeps_the_default(tmp_path):
    root = make_autoresearch_clone(tmp_path / "autoresearch")
    # not a module-level literal: nothing to read, so pairlab's default stays
    (root / "prepare.py").write_text("import os\nTIME_BUDGET = int(os.environ['B'])\n")
    git(root, "commit", "-qam", "budget from the environment")
    ws = adopt(root)
    assert (ws.config.budget_s, ws.config.budget_from) == (None, "")
    assert ws.config.training_budget("cpu") == CPU_BUDGET_S


def test_the_default_budget_follows_the_device_and_a_set_one_wins():
    assert Config().training_budget("cpu") == CPU_BUDGET_S == 120.0
    assert Config().training_budget("cuda") == GPU_BUDGET_S == 300.0
    assert Config(device="mps").training_budget() == GPU_BUDGET_S
    assert Config(budget_s=45.0).training_budget("cuda") == 45.0


def test_init_adopt_says_which_budget_it_read(tmp_path):
    root = make_autoresearch_clone(tmp_path / "autoresearch")
    (root / "prepare.py").write_text("TIME_BUDGET = 120\n")
    git(root, "commit", "-qam", "budget")
    out = subprocess.run([sys.executable, "-m", "pairlab", "init", "--adopt", str(root)],
                         capture_output=True, text=True, check=True).stdout
    assert "training budget 120s, as prepare.py TIME_BUDGET states it" in out


def test_adopt_refuses_what_it_cannot_drive(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(WorkspaceError, match="not a git repository"):
        adopt(plain)
    root = make_autoresearch_clone(tmp_path / "clone")
    with pytest.raises(WorkspaceError, match="model.py is not a file committed"):
        adopt(root, targets=["model.py"])


def test_commit_change_then_reset_to_keeps_git_consistent(ws):
    baseline = ws.head()
    new_train = TRAIN.replace("0.04", "0.08")
    sha = ws.commit_change({"train.py": new_train}, "raise LR to 0.08", parent=baseline)
    root = ws.root
    assert ws.head() == sha == git(root, "rev-parse", "HEAD")
    assert git(root, "log", "-1", "--format=%an <%ae>|%s") == \
        f"{AGENT_AUTHOR[0]} <{AGENT_AUTHOR[1]}>|raise LR to 0.08"
    assert git(root, "rev-parse", f"{sha}^") == baseline
    assert (root / "train.py").read_text() == new_train
    assert ws.file_at(sha, "train.py") == new_train
    assert ws.file_at(baseline, "train.py") == TRAIN
    assert git(root, "status", "--porcelain") == ""
    assert git(root, "merge-base", "--is-ancestor", baseline, sha) == ""
    assert subprocess.run(["git", "merge-base", "--is-ancestor", sha, baseline],
                          cwd=root).returncode == 1

    ws.reset_to(baseline)
    assert ws.head() == baseline and (root / "train.py").read_text() == TRAIN
    assert git(root, "status", "--porcelain") == ""
    # a commit on an older parent moves the branch there too
    other = ws.commit_change({"train.py": TRAIN + "# no newline"}, "tail", parent=baseline)
    assert git(root, "rev-parse", f"{other}^") == baseline
    assert ws.file_at(other, "train.py") == TRAIN + "# no newline"
    assert (root / "train.py").read_text() == TRAIN + "# no newline"


def test_commit_change_refuses_files_that_are_not_targets(ws):
    with pytest.raises(WorkspaceError, match="program.md is not a target"):
        ws.commit_change({"program.md": "x"}, "nope", parent=ws.head())


def test_dirty_human_edits_are_stashed_never_lost(ws):
    baseline = ws.head()
    sha = ws.commit_change({"train.py": TRAIN + "# agent\n"}, "agent", parent=baseline)
    human = TRAIN + "# my own idea\n"
    (ws.root / "train.py").write_text(human)
    (ws.root / "program.md").write_text(PROGRAM + "Prefer small models.\n")
    assert ws.dirty_targets() == ["train.py"]

    ws.reset_to(baseline)
    assert (ws.root / "train.py").read_text() == TRAIN
    assert ws.dirty_targets() == []
    # the human's program.md edit is not a target: left in place
    assert (ws.root / "program.md").read_text().endswith("Prefer small models.\n")
    stashes = git(ws.root, "stash", "list")
    assert "pairlab: edits to train.py saved" in stashes
    assert git(ws.root, "show", "stash@{0}:train.py") + "\n" == human
    assert sha != ws.head()


def test_save_human_changes_says_where_the_edits_went(ws):
    assert ws.save_human_changes("a test") is None
    (ws.root / "train.py").write_text("edited\n")
    saved = ws.save_human_changes("a test")
    assert saved.paths == ["train.py"] and "before a test" in saved.name
    assert saved.name in git(ws.root, "stash", "list")
    assert git(ws.root, "show", f"{saved.commit}:train.py") == "edited"
    git(ws.root, "stash", "pop")
    assert (ws.root / "train.py").read_text() == "edited\n"


def test_a_human_edited_commit_says_so(ws):
    sha = ws.commit_change({"train.py": TRAIN + "# edited\n"}, "smaller LR", parent=ws.head(),
                           human=True)
    assert git(ws.root, "log", "-1", "--format=%B", sha) == "smaller LR\n\npairlab-edited-by: human"


def test_program_and_results_tsv_live_in_the_root(ws):
    from engine.journal import Journal
    assert ws.program() == PROGRAM
    path = ws.write_results_tsv(Journal(ws.pairlab_dir / "journal.db"))
    assert path == ws.root / "results.tsv"
    assert path.read_text().startswith("commit\tval_bpb\tmemory_gb\tstatus\tdescription")
    assert git(ws.root, "status", "--porcelain") == ""       # results.tsv is ignored


def test_moving_the_branch_requires_it_checked_out(ws):
    git(ws.root, "checkout", "-q", "main")
    with pytest.raises(WorkspaceError, match="git -C .* checkout autoresearch/test"):
        ws.reset_to(ws.head())


def test_file_at_names_a_missing_file(ws):
    with pytest.raises(WorkspaceError, match="nope.py does not exist at commit"):
        ws.file_at(ws.head(), "nope.py")


def test_is_workspace(tmp_path, ws):
    assert is_workspace(ws.root) and not is_workspace(tmp_path)
