"""The patch policy, diffs and rebases, checked with real git on temporary repositories."""

import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from engine.workspace import adopt, init, patch
from engine.workspace.patch import (PROTECTED_BEGIN, PROTECTED_END, PatchRefused, check_protected,
                                    parse_user_diff, rebase, split_lines, unified_diff,
                                    validate_change, validator)

TRAIN = f"""\
import os
from nanochat import harness

# ---- hyperparameters: edit these directly ----
LR = 0.04          # learning rate
DEPTH = 4          # transformer layers
BATCH = 8          # sequences per step

model = harness.build(DEPTH)
for step in range(100):
    model.step(LR, BATCH)

{PROTECTED_BEGIN}
result = harness.evaluate_bpb(model)
harness.write_result(result)
{PROTECTED_END}
print("done")
"""
BEGIN_LINE = TRAIN.splitlines().index(PROTECTED_BEGIN)     # 0-based
END_LINE = TRAIN.splitlines().index(PROTECTED_END)
N_LINES = len(TRAIN.splitlines())
# the module-scoped workspace is shared on purpose: examples never change it
SHARED_FIXTURE = [HealthCheck.function_scoped_fixture]


def git(root, *args, input=None):
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True,
                          input=input, text=True).stdout


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("patch")
    (tmp / "train.py").write_text(TRAIN)
    (tmp / "program.md").write_text("# program\n")
    return init(tmp / "ws", tag="t", templates={"train.py": tmp / "train.py",
                                                "program.md": tmp / "program.md"})


def refusal(ws, change, base=None):
    with pytest.raises(PatchRefused) as e:
        validate_change(ws, base or ws.head(), None, change)
    return e.value


def assert_tree_untouched(ws):
    assert git(ws.root, "status", "--porcelain") == ""
    assert (ws.root / "train.py").read_text() == TRAIN


def edit(text, old, new):
    assert old in text
    return text.replace(old, new, 1)


# ---- diffs ----

@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A git repo where diffs are applied to f.py, independently of engine.workspace.patch."""
    root = tmp_path_factory.mktemp("scratch")
    git(root, "init", "-q")
    return root


def apply_with_git(root: Path, old: str, diff: str) -> str:
    (root / "f.py").write_bytes(old.encode())
    subprocess.run(["git", "apply", "--whitespace=nowarn", "-"], cwd=root, check=True,
                   input=diff.encode(), capture_output=True)
    return (root / "f.py").read_bytes().decode()


@pytest.mark.parametrize("old,new", [
    ("a\nb\n", "a\nc\n"),
    ("a\nb", "a\nc"),                    # no newline at the end of either
    ("a\nb\n", "a\nb"),                  # newline removed at the end
    ("a\nb", "a\nb\n"),                  # newline added at the end
    ("", "x\n"),
    ("x\n", ""),
    ("page\x0cbreak\nr\r\n", "page\x0cbreak!\nr\r\n"),   # only \n ends a line
])
def test_diff_applies_with_git_to_exactly_the_new_text(scratch, old, new):
    diff = unified_diff({"f.py": old}, {"f.py": new})
    assert diff.startswith("diff --git a/f.py b/f.py\n--- a/f.py\n+++ b/f.py\n")
    assert apply_with_git(scratch, old, diff) == new


lines_strategy = st.lists(st.sampled_from(["a", "b", "", "  c = 1", "x\ty", "é\r"]), max_size=12)


@settings(max_examples=40, deadline=None, suppress_health_check=SHARED_FIXTURE)
@given(old=lines_strategy, new=lines_strategy, old_eol=st.booleans(), new_eol=st.booleans())
def test_diff_round_trips_through_git_apply(scratch, old, new, old_eol, new_eol):
    old_text = "\n".join(old) + ("\n" if old_eol and old else "")
    new_text = "\n".join(new) + ("\n" if new_eol and new else "")
    assume(old_text != new_text)
    diff = unified_diff({"f.py": old_text}, {"f.py": new_text})
    assert apply_with_git(scratch, old_text, diff) == new_text


def test_unchanged_files_are_left_out_of_the_diff():
    assert unified_diff({"a.py": "x\n", "b.py": "y\n"}, {"a.py": "x\n", "b.py": "z\n"}) \
        .count("diff --git") == 1
    assert unified_diff({"a.py": "x\n"}, {"a.py": "x\n"}) == ""


def test_split_lines_keeps_only_newline_endings():
    assert split_lines("a\x0cb\r\nc") == ["a\x0cb\r\n", "c"]
    assert split_lines("") == [] and split_lines("\n") == ["\n"]


# ---- the policy on full texts ----

def test_a_valid_change_returns_a_diff_git_accepts(ws):
    new = edit(TRAIN, "LR = 0.04", "LR = 0.08")
    diff = validate_change(ws, ws.head(), None, {"train.py": new})
    assert "-LR = 0.04" in diff and "+LR = 0.08" in diff
    git(ws.root, "apply", "--check", input=diff)
    assert_tree_untouched(ws)
    assert validator(ws, ws.head())({"train.py": new}) is None


def test_several_targets_in_one_change(tmp_path):
    for name, text in (("train.py", TRAIN), ("model.py", "WIDTH = 64\n"), ("program.md", "#\n")):
        (tmp_path / name).write_text(text)
    multi = init(tmp_path / "multi", tag="m", templates={
        name: tmp_path / name for name in ("train.py", "model.py", "program.md")})
    assert multi.config.targets == ["train.py", "model.py"]
    base = multi.files_at(multi.head())
    both = {"train.py": edit(TRAIN, "LR = 0.04", "LR = 0.05"), "model.py": "WIDTH = 96\n"}
    diff = validate_change(multi, multi.head(), base, both)
    assert diff.count("diff --git") == 2
    # unchanged files may ride along; only differences make the diff
    one = validate_change(multi, multi.head(), base, {**base, "model.py": "WIDTH = 32\n"})
    assert one.count("diff --git") == 1 and "model.py" in one
    broken = {**both, "train.py": TRAIN.replace(PROTECTED_END + "\n", "")}
    with pytest.raises(PatchRefused, match="train.py: the protected fence was changed"):
        validate_change(multi, multi.head(), base, broken)


@pytest.mark.parametrize("path,rule", [
    ("program.md", "not-a-target"),
    ("./train.py", "not-a-target"),
    ("sub/train.py", "not-a-target"),
    ("../train.py", "path-traversal"),
    ("nanochat/../../etc/passwd", "path-traversal"),
    ("/etc/passwd", "absolute-path"),
    ("C:\\train.py", "absolute-path"),
])
def test_paths_outside_the_targets_are_refused(ws, path, rule):
    e = refusal(ws, {path: "x\n"})
    assert e.rule == rule
    assert repr(path) in e.message and "train.py" in e.message
    assert_tree_untouched(ws)


def test_binary_content_is_refused_with_its_line(ws):
    e = refusal(ws, {"train.py": TRAIN + "x = 1\nblob = '\0'\n"})
    assert e.rule == "binary" and f"line {N_LINES + 2}" in e.message
    e = refusal(ws, {"train.py": "ok\nbad \udcff\n"})         # not encodable as UTF-8
    assert e.rule == "binary" and "line 2 is not valid UTF-8" in e.message


def test_an_empty_change_is_refused(ws):
    assert refusal(ws, {"train.py": TRAIN}).rule == "empty"
    assert refusal(ws, {}).rule == "empty"


def test_a_symlinked_target_is_refused(tmp_path):
    root = tmp_path / "clone"
    root.mkdir()
    (root / "real.py").write_text("x = 1\n")
    (root / "train.py").symlink_to("real.py")
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "-c", "user.name=k", "-c", "user.email=k@x", "commit", "-q", "-m", "init")
    ws = adopt(root, tag="s")
    e = refusal(ws, {"train.py": "x = 2\n"})
    assert e.rule == "symlink" and "train.py is a symbolic link" in e.message


def test_changing_the_protected_block_names_the_lines(ws):
    new = edit(TRAIN, "harness.write_result(result)", "harness.write_result(result * 0.5)")
    e = refusal(ws, {"train.py": new})
    assert e.rule == "protected"
    assert f"lines {BEGIN_LINE + 1}-{END_LINE + 1}" in e.message
    assert f"touches line(s) {END_LINE}" in e.message          # the write_result line
    assert "outside the block" in e.message


@pytest.mark.parametrize("mutate,detail", [
    (lambda t: t.replace(PROTECTED_END + "\n", ""), "0 end marker"),
    (lambda t: t.replace(PROTECTED_BEGIN + "\n", ""), "0 begin and 1 end marker"),
    (lambda t: t + PROTECTED_BEGIN + "\n" + PROTECTED_END + "\n", "2 begin and 2 end"),
    (lambda t: t.replace(PROTECTED_BEGIN + "\n", "").replace(PROTECTED_END + "\n", "")
     .replace("result = harness.evaluate_bpb(model)\nharness.write_result(result)\n", ""),
     f"touches line(s) {BEGIN_LINE + 1}-{END_LINE + 1}"),
])
def test_removing_or_duplicating_the_fence_is_refused(ws, mutate, detail):
    e = refusal(ws, {"train.py": mutate(TRAIN)})
    assert e.rule == "protected" and detail in e.message


def test_a_file_without_a_fence_has_nothing_to_protect():
    old = "x = 1\nprint(x)\n"
    check_protected("train.py", old, old.replace("1", "2"))
    check_protected("train.py", old, old + PROTECTED_BEGIN + "\n")


def test_a_malformed_fence_at_the_base_is_reported():
    with pytest.raises(PatchRefused, match="malformed: found 1 begin and 0 end"):
        check_protected("train.py", PROTECTED_BEGIN + "\nx\n", "y\n")


def test_the_markers_are_defined_once():
    # engine/base/protected.py holds the one definition; everything else imports it (the
    # template writes the lines themselves, once each)
    root = Path(__file__).resolve().parents[1]
    sources = [p for folder in ("pairlab", "engine", "nanochat", "tests", "tui", "bench")
               for p in (root / folder).rglob("*.py")]
    prefix = PROTECTED_END[:-len("end ----")]
    holders = sorted(p.relative_to(root).as_posix() for p in sources if prefix in p.read_text())
    assert holders == ["engine/base/protected.py", "nanochat/train.py"]


# random edits: inside the fence always refused, outside always accepted

fresh_line = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\0"),
                     max_size=30).filter(lambda s: s.strip() not in (PROTECTED_BEGIN,
                                                                     PROTECTED_END))


def apply_edit(lines, op, index, text):
    lines = list(lines)
    if op == "replace":
        lines[index] = text
    elif op == "delete":
        del lines[index]
    else:
        lines.insert(index, text)
    return "\n".join(lines) + "\n"


@settings(max_examples=40, deadline=None, suppress_health_check=SHARED_FIXTURE)
@given(data=st.data(), op=st.sampled_from(["replace", "delete", "insert"]), text=fresh_line)
def test_random_edits_inside_the_fence_are_refused(ws, data, op, text):
    lines = TRAIN.splitlines()
    # an insertion at index i goes before line i: inside means between two fenced lines
    low, high = (BEGIN_LINE + 1, END_LINE) if op == "insert" else (BEGIN_LINE, END_LINE)
    index = data.draw(st.integers(low, high))
    new = apply_edit(lines, op, index, text)
    assume(new != TRAIN)
    e = refusal(ws, {"train.py": new})
    assert e.rule == "protected", e.message


@settings(max_examples=40, deadline=None, suppress_health_check=SHARED_FIXTURE)
@given(data=st.data(), op=st.sampled_from(["replace", "delete", "insert"]), text=fresh_line)
def test_random_edits_outside_the_fence_pass(ws, data, op, text):
    lines = TRAIN.splitlines()
    if op == "insert":
        index = data.draw(st.sampled_from([*range(0, BEGIN_LINE + 1),
                                           *range(END_LINE + 1, N_LINES + 1)]))
    else:
        index = data.draw(st.sampled_from([*range(0, BEGIN_LINE), *range(END_LINE + 1, N_LINES)]))
    new = apply_edit(lines, op, index, text)
    assume(new != TRAIN)
    diff = validate_change(ws, ws.head(), {"train.py": TRAIN}, {"train.py": new})
    assert diff and git(ws.root, "status", "--porcelain") == ""


def test_the_real_template_accepts_a_hyperparameter_edit_and_guards_its_fence(tmp_path):
    real = init(tmp_path / "real", tag="t")        # the templates that ship with pairlab
    train = real.file_at(real.head(), "train.py")
    seed = edit(train, "SEED = 42", "SEED = 7")
    diff = validate_change(real, real.head(), None, {"train.py": seed})
    assert "+SEED = 7" in diff
    cheat = edit(train, "harness.handoff(model,", "harness.handoff(model.eval(),")
    assert refusal(real, {"train.py": cheat}).rule == "protected"


# ---- diffs written by a human ----

def test_a_git_style_user_diff_becomes_new_texts(ws):
    new = edit(TRAIN, "DEPTH = 4 ", "DEPTH = 6 ")
    change = parse_user_diff(ws, ws.head(), unified_diff({"train.py": TRAIN}, {"train.py": new}))
    assert change == {"train.py": new}
    assert_tree_untouched(ws)


def test_a_plain_p0_user_diff_is_accepted(ws):
    new = edit(TRAIN, "BATCH = 8 ", "BATCH = 16")
    diff = unified_diff({"train.py": TRAIN}, {"train.py": new})
    plain = diff.split("\n", 1)[1].replace("--- a/train.py", "--- train.py") \
        .replace("+++ b/train.py", "+++ train.py")
    assert parse_user_diff(ws, ws.head(), plain.encode()) == {"train.py": new}


def header_diff(*headers, body=True):
    text = "diff --git a/train.py b/train.py\n" + "".join(h + "\n" for h in headers)
    if body:
        text += "--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-import os\n+import sys\n"
    return text


@pytest.mark.parametrize("diff,rule", [
    (header_diff("old mode 100644", "new mode 100755", body=False), "mode-change"),
    (header_diff("similarity index 90%", "rename from train.py", "rename to model.py",
                 body=False), "rename"),
    (header_diff("deleted file mode 100644", body=False), "add-or-delete"),
    ("diff --git a/train.py b/train.py\nindex 1..2 100644\nGIT binary patch\nliteral 1\n",
     "binary"),
    ("--- /dev/null\n+++ b/evil.py\n@@ -0,0 +1 @@\n+import os\n", "add-or-delete"),
    ("--- a/train.py\n+++ b/other.py\n@@ -1 +1 @@\n-import os\n+import sys\n", "rename"),
    ("--- a/../x.py\n+++ b/../x.py\n@@ -1 +1 @@\n-a\n+b\n", "path-traversal"),
    ("--- a/program.md\n+++ b/program.md\n@@ -1 +1 @@\n-# program\n+# mine\n", "not-a-target"),
    ("--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-import nothing\n+import sys\n",
     "does-not-apply"),
    ("--- a/train.py\n+++ b/train.py\n@@ -1,5 +1,1 @@\n-import os\n", "malformed"),
    ("just some words\n", "empty"),
    (b"--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-import os\n+import \xff\n", "binary"),
])
def test_user_diffs_outside_the_policy_are_refused(ws, diff, rule):
    with pytest.raises(PatchRefused) as e:
        parse_user_diff(ws, ws.head(), diff)
    assert e.value.rule == rule, e.value.message
    assert_tree_untouched(ws)


def test_a_user_diff_into_the_fence_is_refused(ws):
    new = edit(TRAIN, "result = harness.evaluate_bpb(model)", "result = 0.5")
    with pytest.raises(PatchRefused, match="protected"):
        parse_user_diff(ws, ws.head(), unified_diff({"train.py": TRAIN}, {"train.py": new}))


def test_a_diff_that_does_not_apply_to_the_base_is_refused(ws):
    drifted = {"train.py": edit(TRAIN, "import os", "import os, sys")}
    diff = unified_diff({"train.py": TRAIN}, drifted)
    with pytest.raises(PatchRefused) as e:
        patch.git_apply_check(ws.root, ws.head(), diff.replace("-import os\n", "-import re\n"))
    assert e.value.rule == "does-not-apply" and "train.py" in e.value.message


# ---- rebasing a proposal onto a newer best ----

def test_rebase_merges_edits_to_different_lines():
    proposal = edit(TRAIN, 'print("done")', 'print("done", LR)')
    new_best = edit(TRAIN, "LR = 0.04", "LR = 0.08")
    rebased = rebase({"train.py": proposal}, {"train.py": TRAIN}, {"train.py": new_best})
    assert rebased == {"train.py": edit(new_best, 'print("done")', 'print("done", LR)')}


def test_rebase_conflicts_on_adjacent_lines_as_git_does():
    proposal = edit(TRAIN, "DEPTH = 4 ", "DEPTH = 6 ")
    new_best = edit(TRAIN, "LR = 0.04", "LR = 0.08")
    assert rebase({"train.py": proposal}, {"train.py": TRAIN}, {"train.py": new_best}) is None


def test_rebase_keeps_a_missing_final_newline():
    old, proposal, new_best = "a\nb\nc\nd\ne", "a\nB\nc\nd\ne", "a\nb\nc\nd\nE"
    rebased = rebase({"f.py": proposal}, {"f.py": old}, {"f.py": new_best})
    assert rebased == {"f.py": "a\nB\nc\nd\nE"}


def test_rebase_returns_none_on_conflict():
    proposal = edit(TRAIN, "LR = 0.04", "LR = 0.08")
    new_best = edit(TRAIN, "LR = 0.04", "LR = 0.02")
    assert rebase({"train.py": proposal}, {"train.py": TRAIN}, {"train.py": new_best}) is None
