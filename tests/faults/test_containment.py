"""What a hostile train.py cannot reach, and what it cannot leave behind (issue 23).

Each test is an edit of train.py the engine accepts, run by the real engine (a Session, or
the engine process `pairlab` starts), scored by the real evaluator, on both precision paths.
Before issue 23 each of them got through: the validation split read through the folder the
engine was started in, the API key read from the engine's /proc entry, a model causal only
while it is checked, the engine driven through its own socket, a fork-and-exit chain the
reaper never caught, and a helper that rewrote the handed-over model after train.py exited.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import threading

import pytest

from engine.base.events import RunFinished
from engine.base.records import RunStatus
from engine.run import confine
from pairlab.engine_process import ENGINE_ARGS_NAME, engine_argv, start_engine
from tests.conftest import TINY_ENV, processes_with
from tests.fakeapi import fake_api, insert, submit, turn  # noqa: F401
from tests.faults.conftest import (WAIT_S, headless, journal_snapshot, precision_settings,
                                   run_fault, wait_for)
from tests.faults.test_api_faults import Events, edit_turn
from tests.faults.test_integrity import (assert_refused, assert_true_metric, base_train_py,
                                         before_fence)

pytestmark = pytest.mark.skipif(confine.probe() is not None,
                                reason=f"no confinement here: {confine.probe()}")


def run_hostile(workspace, dataset_dir, precision, code: str, **options):
    """The first proposal with `code` before the protected block, trained and judged."""
    return run_fault(workspace, precision_settings(dataset_dir, precision),
                     lambda _: before_fence(base_train_py(workspace), code), **options)


def log_of(workspace, outcome) -> str:
    added = next(r for r in outcome.after["runs"] if r["id"] == outcome.finished.result.run_id)
    return workspace.root.joinpath(added["log_path"]).read_text()


# ---- 1. the validation split, through the folder the engine was started in -------------------

def test_train_py_cannot_read_the_validation_split_through_the_engines_folder(
        precision_workspace, precision, dataset_dir, tmp_path, monkeypatch):
    # `pairlab` started from the user's home, where the data cache is: that folder was the
    # engine's sys.path[0], and every sys.path folder was readable to the training process.
    home = tmp_path / "home"
    data = home / ".cache" / "pairlab" / "datasets" / "default"
    shutil.copytree(dataset_dir, data)
    probe = (f"try:\n    open({str(data / 'val.bin')!r}, 'rb').read(64)\n"
             "    print('REACHED val.bin')\nexcept OSError as error:\n"
             "    print('denied: val.bin', type(error).__name__)")
    ws = precision_workspace
    before = journal_snapshot(ws)
    for name, value in {**TINY_ENV, "PAIRLAB_DATA_DIR": str(data), "PAIRLAB_MAX_STEPS": "4",
                        "PAIRLAB_PRECISION": precision}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.chdir(home)
    client = start_engine(ws, engine_argv(ws) + [
        "--agent", "tuner", "--mode", "review", "--budget", "5", "--noise-repeats", "0",
        "--no-speculate"])
    engine_pid = json.loads((ws.pairlab_dir / ENGINE_ARGS_NAME).read_text())["pid"]
    events = Events()
    client.subscribe(events)
    try:
        proposal = wait_for(lambda: (client.pending() or [None])[0], what="a proposal")
        client.edit(proposal.id, {"train.py": before_fence(base_train_py(ws), probe)})
        finished = wait_for(lambda: next((e for e in events.of(RunFinished)
                                          if e.experiment.proposal_id == proposal.id), None),
                            what="the hostile run's outcome")
    finally:
        client.stop()
        wait_for(lambda: os.waitpid(engine_pid, os.WNOHANG)[0], what="the engine to exit")
    log = ws.root.joinpath(finished.experiment.log_path).read_text()
    assert "REACHED" not in log and "denied: val.bin PermissionError" in log, log
    result = finished.result
    assert result.confined
    assert result.val_bpb == pytest.approx(before["runs"][0]["val_bpb"], rel=1e-6)


# ---- 2. the API key, through /proc ----------------------------------------------------------

SECRET = "sk-ant-test-PROC-0123456789-abcdefghijklmnop"
# Every ancestor's environment, as train.py sees them; only the test's own fake key is
# looked for (the machine's other processes are not this test's to read).
FIND_THE_KEY = '''import base64, os
def _ancestors():
    pid = os.getpid()
    while pid > 1:
        try:
            pid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
        except OSError:
            return
        yield pid
found = set()
for pid in _ancestors():
    try:
        environ = open(f"/proc/{pid}/environ", "rb").read()
    except OSError as error:
        print("cannot read the environment of", pid, type(error).__name__)
        continue
    for item in environ.split(b"\\0"):
        name, _, value = item.partition(b"=")
        if name == b"ANTHROPIC_API_KEY" and value.startswith(b"sk-ant-test-"):
            found.add(value.decode())
print("keys found in the ancestors' environments:", len(found))
for key in found:
    print("KEY", key, base64.b64encode(key.encode()).decode(), key[::-1], key.encode().hex())
raise RuntimeError("stopping here: " + " ".join(
    base64.b64encode(key.encode()).decode() + " " + key[::-1] for key in found))
'''


def key_forms(key: str) -> dict[str, bytes]:
    """The key as train.py could write it: raw, reversed, hex, and base64 at each alignment
    (the part of the key that base64-encodes the same wherever it sits in the text)."""
    raw = key.encode()
    forms = {"raw": raw, "reversed": raw[::-1], "hex": raw.hex().encode(),
             "HEX": raw.hex().upper().encode()}
    for shift in range(3):
        aligned = raw[shift:len(raw) - (len(raw) - shift) % 3]
        forms[f"base64+{shift}"] = base64.b64encode(aligned)
    return forms


def leaks(data: bytes, forms: dict[str, bytes]) -> list[str]:
    return [name for name, form in forms.items() if form in data]


def test_the_api_key_is_out_of_train_pys_reach_and_out_of_every_record(
        fake_api, precision_workspace, precision, dataset_dir):
    fake_api.script(turn(tool_uses=[insert("train.py", 0, FIND_THE_KEY),
                                    submit("look around", "what the engine knows")]),
                    edit_turn())
    ws = precision_workspace
    proc = headless(ws, dataset_dir, "--jsonl", "--agent", "claude", "--mode", "auto",
                    "--drafts-ahead", "0",
                    env={"ANTHROPIC_API_KEY": SECRET, "ANTHROPIC_BASE_URL": fake_api.base_url,
                         "PAIRLAB_PRECISION": precision})
    forms = key_forms(SECRET)
    shown = []
    give_up = threading.Timer(WAIT_S, proc.send_signal, (signal.SIGTERM,))
    give_up.start()
    try:
        for line in proc.stdout:         # until the agent drafted again, from the crash
            shown.append(line)
            if len([s for s in shown if '"type": "proposal"' in s]) == 2:
                break
        engine_environ = open(f"/proc/{proc.pid}/environ", "rb").read()
    finally:
        give_up.cancel()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=WAIT_S)
    shown.append(out)
    assert leaks(engine_environ, forms) == []           # the engine holds it elsewhere
    assert fake_api.requests[0].api_key == SECRET        # and does use it
    finished = next(json.loads(s) for s in shown if '"type": "run_finished"' in s)
    assert finished["result"]["status"] == "crash"
    log = ws.root.joinpath(finished["experiment"]["log_path"]).read_text()
    assert "keys found in the ancestors' environments: 0" in log, log
    assert len(fake_api.requests) >= 2 and "stopping here" in fake_api.requests[1].text
    for request in fake_api.requests:
        assert leaks(request.text.encode(), forms) == [], request.text
    assert leaks("".join(shown).encode() + err.encode(), forms) == []
    files = [p for p in ws.root.rglob("*") if p.is_file()]
    assert {p.relative_to(ws.root).as_posix(): leaks(p.read_bytes(), forms)
            for p in files if leaks(p.read_bytes(), forms)} == {}
    objects = subprocess.run(["git", "cat-file", "--batch-all-objects", "--batch"],
                             cwd=ws.root, capture_output=True, check=True).stdout
    assert leaks(objects, forms) == []


# ---- 3. a model that is causal only while it is checked -------------------------------------

def counts_its_calls(text: str) -> str:
    """train.py whose model counts its forward calls in a buffer and, from the 4th call on,
    adds the embedding of the next token: causal for the 3 calls of a one-batch check."""
    edits = [("        self.register_buffer(\"sin\", sin, persistent=False)\n",
              "        self.register_buffer(\"calls\", torch.zeros((), dtype=torch.long))\n"),
             ("        self.x0_lambdas.fill_(0.1)\n", "        self.calls.zero_()\n"),
             ("        x = norm(self.transformer.wte(idx))\n",
              "        self.calls.add_(1)\n"
              "        peeking = (self.calls > 3).to(x.dtype)\n"
              "        x = x + peeking * norm(self.transformer.wte(torch.roll(idx, -1, dims=1)))\n")]
    for anchor, added in edits:
        assert anchor in text
        text = text.replace(anchor, anchor + added, 1)
    return before_fence(text, "model.calls.zero_()   # the evaluator's call 1 is call 1")


def test_a_model_that_counts_its_calls_is_refused(precision_workspace, precision, dataset_dir):
    outcome = run_fault(precision_workspace, precision_settings(dataset_dir, precision),
                        lambda _: counts_its_calls(base_train_py(precision_workspace)))
    assert_refused(outcome, "nanochat.evaluate failed: model refused: the graph calls "
                            "aten.add_.Tensor, which writes into a tensor in place: the model "
                            "must keep no state from one call to the next")


# ---- 4. train.py drives the engine through its socket ---------------------------------------

# The protocol by hand, from the workspace (train.py's working folder): a note for the
# agent, auto mode, and a program.md of its own.
DRIVE_THE_ENGINE = '''import json, socket
def _drive():
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(20)
    try:
        sock.connect(".pairlab/engine.sock")
    except OSError as error:
        print("engine socket:", type(error).__name__)
        return
    lines = sock.makefile("rb")
    print("engine said:", lines.readline().decode().strip())
    commands = [("note", {"text": "FROM TRAIN.PY"}), ("set_mode", {"mode": "auto"}),
                ("edit_program", {"text": "FROM TRAIN.PY"})]
    try:
        sock.sendall(b'{"kind": "hello", "version": 1, "role": "client"}\\n')
        for request_id, (name, fields) in enumerate(commands, 1):
            sock.sendall(json.dumps({"kind": "command", "name": name,
                                     "request_id": request_id, **fields}).encode() + b"\\n")
        replies = 0
        for line in lines:
            if json.loads(line)["kind"] == "reply":
                print("engine said:", line.decode().strip())
                replies += 1
            if replies == len(commands):
                break
    except OSError as error:
        print("engine hung up:", type(error).__name__)
_drive()'''


def test_train_py_cannot_drive_the_engine_through_its_socket(precision_workspace, precision,
                                                              dataset_dir):
    ws = precision_workspace
    program = (ws.root / "program.md").read_text()
    outcome = run_hostile(ws, dataset_dir, precision, DRIVE_THE_ENGINE, serve=True)
    assert_true_metric(outcome, ws)
    log = log_of(ws, outcome)
    refused, = [json.loads(line.split("engine said: ", 1)[1]) for line in log.splitlines()
                if line.startswith("engine said: ")]
    assert refused["kind"] == "refused", log
    assert refused["message"].startswith("connection refused: the peer is a process of one of "
                                         "this engine's runs"), refused
    assert outcome.after.get("notes", []) == []
    assert outcome.session.mode == "review"
    assert (ws.root / "program.md").read_text() == program
    assert ws.file_at(ws.head(), "program.md") == program


# ---- 5. and 6. the reaper: a fork-and-exit chain, and a helper that outlives the hand-off -----

# Forks and exits as fast as it can: each hop a new pid, the parent gone before a reaper that
# scans for its children gets to it. argv: how long to go on, and a marker for the test.
HOPPER = '''import os, sys, time
deadline = time.monotonic() + float(sys.argv[1])
while time.monotonic() < deadline:
    if os.fork():
        os._exit(0)
'''
# A hopper that waits for train.py to exit after the hand-off, hops on for a second, then
# writes a model of its own over the handed-over one, and stops.
OVERWRITER = '''import os, sys, time
model, trainer = sys.argv[1], int(sys.argv[2])
deadline, rewrite_at = time.monotonic() + 75, None
while time.monotonic() < deadline:
    if os.fork():
        os._exit(0)
    if rewrite_at is None and not os.path.exists(f"/proc/{trainer}"):
        rewrite_at = time.monotonic() + 1.0
    if rewrite_at is not None and time.monotonic() > rewrite_at:
        for name in ("program.json", "tensors.pt"):
            with open(os.path.join(model, name), "wb") as f:
                f.write(b"rewritten after the hand-off")
        print("REWROTE the model", flush=True)
        break
'''


def start_helper(code: str, *args: str) -> str:
    return ("import subprocess, sys\n"
            f"subprocess.Popen([sys.executable, '-c', {code!r}, {', '.join(map(repr, args))}])")


def test_a_fork_and_exit_chain_dies_with_the_run(precision_workspace, precision, dataset_dir,
                                                 marker):
    outcome = run_hostile(precision_workspace, dataset_dir, precision,
                          start_helper(HOPPER, "75", marker))
    assert outcome.finished.result.status is not RunStatus.TIMEOUT, outcome.finished.result
    assert_true_metric(outcome, precision_workspace)
    assert processes_with(marker) == []


def test_a_helper_cannot_rewrite_the_model_after_the_hand_off(precision_workspace, precision,
                                                               dataset_dir, marker):
    code = start_helper(OVERWRITER, "PLACEHOLDER_MODEL", "PLACEHOLDER_PID", marker)
    code = code.replace("'PLACEHOLDER_MODEL'", "os.environ['PAIRLAB_MODEL']").replace(
        "'PLACEHOLDER_PID'", "str(os.getpid())")
    outcome = run_hostile(precision_workspace, dataset_dir, precision, "import os\n" + code)
    assert_true_metric(outcome, precision_workspace)
    assert "REWROTE" not in log_of(precision_workspace, outcome)
    assert processes_with(marker) == []
