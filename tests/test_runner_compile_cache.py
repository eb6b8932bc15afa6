"""Each commit's own compile cache, seeded from the prepared one: real runs of small fake
train.py scripts that look into their cache and write into it (and, confined, try to write
into another commit's)."""

from __future__ import annotations

import json
import os
import textwrap
import time
from pathlib import Path

import pytest

from engine.base.records import RunStatus
from engine.run import confine, evaluation
from engine.run.compile_cache import (FOLDER, SEED_FOLDER, STAMP_FILE, CommitCache, code_key, prune,
                                      seed_stamp, write_seed)
from engine.run.runner import Runner

# Lists what its inductor cache holds, then leaves a file of its own there; it hands
# nothing over, so each run ends as a crash of that run (which is all these tests need).
SPY = textwrap.dedent('''
    import os
    cache = os.environ["TORCHINDUCTOR_CACHE_DIR"]
    os.makedirs(cache, exist_ok=True)
    print("seen:", ",".join(sorted(os.listdir(cache))))
    with open(os.path.join(cache, "written-by-" + os.environ["WHO"]), "w") as f:
        f.write("compiled code")
    for name, path in (("other", os.environ.get("OTHER_CACHE")),
                       ("seed", os.environ.get("SEED_CACHE"))):
        if path:
            try:
                with open(os.path.join(path, "planted"), "w") as f:
                    f.write("poison")
                print(name + ": written")
            except OSError:
                print(name + ": denied")
''')


def linked_data(tmp_path, dataset_dir) -> Path:
    """The test dataset's files, linked into a folder of the test's own."""
    data = tmp_path / "data"
    data.mkdir()
    for path in dataset_dir.iterdir():
        if path.is_file():
            os.link(path, data / path.name)
    return data


@pytest.fixture
def seeded_data(tmp_path, dataset_dir) -> Path:
    """The test dataset's files, with a prepared seed beside them."""
    data = linked_data(tmp_path, dataset_dir)
    (data / SEED_FOLDER / "inductor").mkdir(parents=True)
    (data / SEED_FOLDER / "inductor" / "from-the-seed").write_text("the template's compile")
    return data


def spy(root: Path, commit: str, run_id: str, who: str, data: Path, **env) -> tuple:
    """Train `commit` (a variant of SPY) in root; returns the runner and what it printed."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.py").write_text(SPY + f"# {commit}\n")
    cache_dir = env.pop("cache_dir", None)
    runner = Runner(root, run_id, 1.0, device="cpu", data_dir=data, grace_s=3.0,
                    term_grace_s=1.0, env={"WHO": who, "PAIRLAB_COMPILE": "0", **env},
                    cache_dir=cache_dir)
    result = runner.run()
    assert result.status == RunStatus.CRASH, result.message
    lines = Path(result.log_path).read_text().splitlines()
    return runner, lines


def seen(lines: list[str]) -> list[str]:
    (line,) = [line for line in lines if line.startswith("seen:")]
    return [name for name in line[len("seen:"):].strip().split(",") if name]


def test_runs_of_a_commit_share_a_cache_that_no_other_commit_loads(tmp_path, seeded_data):
    ws = tmp_path / "ws"
    first, lines = spy(ws, "commit A", "r1", "A", seeded_data)
    assert seen(lines) == ["from-the-seed"]          # a new commit starts from the seed
    _, lines = spy(ws, "commit B", "r2", "B", seeded_data)
    assert seen(lines) == ["from-the-seed"]          # not what A's run wrote
    # A again, from a slot's worktree that shares the workspace's caches: A's own cache
    _, lines = spy(ws / ".pairlab" / "slots" / "0", "commit A", "r3", "A-again", seeded_data,
                   cache_dir=ws / ".pairlab" / "cache")
    assert seen(lines) == ["from-the-seed", "written-by-A"]

    assert first.compile_cache.path.parent == ws / ".pairlab" / "cache" / FOLDER
    assert sorted(path.name for path in first.compile_cache.path.parent.iterdir()) == sorted(
        [code_key(ws, ["train.py"]), first.compile_cache.path.name])
    assert os.listdir(seeded_data / SEED_FOLDER / "inductor") == ["from-the-seed"]


def test_without_a_seed_a_commit_starts_with_an_empty_cache(tmp_path, dataset_dir):
    _, lines = spy(tmp_path / "ws", "commit A", "r1", "A", dataset_dir)
    assert seen(lines) == []


@pytest.mark.skipif(confine.probe() is not None, reason=f"no confinement: {confine.probe()}")
def test_a_confined_run_cannot_write_another_commits_cache_or_the_seed(tmp_path, seeded_data):
    ws = tmp_path / "ws"
    other, _ = spy(ws, "commit A", "r1", "A", seeded_data)
    _, lines = spy(ws, "commit B", "r2", "B", seeded_data,
                   OTHER_CACHE=str(other.compile_cache.path / "inductor"),
                   SEED_CACHE=str(seeded_data / SEED_FOLDER / "inductor"))
    assert "other: denied" in lines and "seed: denied" in lines
    assert sorted(os.listdir(other.compile_cache.path / "inductor")) == [
        "from-the-seed", "written-by-A"]
    assert os.listdir(seeded_data / SEED_FOLDER / "inductor") == ["from-the-seed"]


def test_the_code_key_follows_the_content_of_the_edited_files(tmp_path):
    (tmp_path / "train.py").write_text("A")
    (tmp_path / "model.py").write_text("B")
    key = code_key(tmp_path, ["train.py", "model.py"])
    assert code_key(tmp_path, ["model.py", "train.py"]) == key
    assert code_key(tmp_path, ["train.py"]) != key
    (tmp_path / "model.py").write_text("C")
    assert code_key(tmp_path, ["train.py", "model.py"]) != key
    (tmp_path / "model.py").write_text("")
    assert code_key(tmp_path, ["train.py", "model.py"]) != code_key(tmp_path, ["train.py",
                                                                             "gone.py"])


def test_pruning_keeps_the_recent_folders_and_the_held_ones(tmp_path):
    now = time.time()
    caches = [CommitCache(tmp_path, f"key{i}", None) for i in range(5)]
    for age, cache in zip((50, 40, 30, 20, 10), caches):
        cache.open()
        os.utime(cache.path, (now - age, now - age))
        if cache is not caches[0]:
            cache.close()
    removed = prune(tmp_path / FOLDER, keep=2)     # the two newest stay; key0 is in use
    assert sorted(path.name for path in removed) == ["key1", "key2"]
    assert sorted(os.listdir(tmp_path / FOLDER)) == ["key0", "key3", "key4"]
    caches[0].close()
    assert [path.name for path in prune(tmp_path / FOLDER, keep=2)] == ["key0"]


def test_the_evaluator_gets_no_compile_cache_and_openmp_threads_that_sleep(tmp_path):
    runner = Runner(tmp_path, "r1", 1.0, device="cpu")
    env = evaluation.evaluator_env(runner.child_env(), None)
    assert "TORCHINDUCTOR_CACHE_DIR" in runner.child_env()
    assert "TORCHINDUCTOR_CACHE_DIR" not in env and "TRITON_CACHE_DIR" not in env
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"


@pytest.mark.e2e
def test_the_seed_is_written_by_the_shipped_train_py_once(tmp_path, dataset_dir, monkeypatch):
    """The real template, a few steps on the test dataset; uncompiled here (seconds, not
    minutes), so the seed holds only its stamp: what this checks is the swap and the stamp."""
    monkeypatch.setenv("PAIRLAB_COMPILE", "0")
    monkeypatch.setenv("PAIRLAB_SEQ_LEN", "64")
    data = linked_data(tmp_path, dataset_dir)
    assert write_seed(data, "cpu") is True
    seed = data / SEED_FOLDER
    assert json.loads((seed / STAMP_FILE).read_text()) == seed_stamp("cpu")
    assert sorted(path.name for path in data.iterdir()) == sorted(
        [*(path.name for path in dataset_dir.iterdir() if path.is_file()), SEED_FOLDER])
    assert write_seed(data, "cpu") is False                  # stamped: nothing to do
    (seed / "stale").write_text("from an older torch")
    assert write_seed(data, "cpu", force=True) is True
    assert not (seed / "stale").exists()
