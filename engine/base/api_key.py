"""The Anthropic API key: held outside the environment, and redacted in every form a run
could print it in.

The training process never gets the key: the runner strips secrets from its environment by
name, and its /proc shows no process outside the run (engine.run.confine). Behind that:

- `pairlab` and the engine take the key out of their environment when they start, out of
  the environment block that /proc/<pid>/environ shows included, and `pairlab` hands it to
  the engine it starts through a pipe: no process of pairlab's shows it there.
- A run's output is hostile text: the runner redacts it before it reaches the log, the
  screen, the journal or the agent's prompt, the key as is and encoded (reversed, rot13,
  hex, base64 and base32 at every alignment) and any 16 characters of it in a row; the
  journal redacts whatever else it stores the same way.
"""

from __future__ import annotations

import base64
import codecs
import ctypes
import os
import re
import sys
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

NAME = "ANTHROPIC_API_KEY"
FD_VARIABLE = "PAIRLAB_API_KEY_FD"   # set by `pairlab` for the engine it starts
REDACTED = "[redacted]"
MIN_LENGTH = 8           # shorter values would redact ordinary words (a placeholder key)
FRAGMENT = 16            # this many characters of the key in a row are the key
_LOOKS_LIKE_A_KEY = re.compile(r"sk-ant-[A-Za-z0-9_\-]+")

_held: str | None = None


def value() -> str:
    """The key: the one taken from the environment at start, else the environment's."""
    return _held if _held is not None else os.environ.get(NAME, "").strip()


def take() -> None:
    """At the start of the `pairlab` process or of the engine: the key out of the
    environment into this process's memory (from the pipe `pairlab` handed over, when it
    started this engine)."""
    global _held
    fd = os.environ.pop(FD_VARIABLE, None)
    if fd is not None:
        with os.fdopen(int(fd), "rb") as pipe:
            _held = pipe.read().decode().strip()
    key = os.environ.pop(NAME, None)
    if key is not None:
        _scrub_environment_block(NAME)
        if _held is None:
            _held = key.strip()


def _scrub_environment_block(name: str) -> None:
    """Zero name's value in this process's original environment block: /proc/<pid>/environ
    shows that block (fields 50 and 51 of /proc/self/stat bound it), whatever os.environ
    says since. The strings are ours, on our stack; setproctitle rewrites argv the same way."""
    if not sys.platform.startswith("linux"):
        return
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start = int(fields[50 - 3])
        block = Path("/proc/self/environ").read_bytes()
    except (OSError, IndexError, ValueError):
        return
    prefix, offset = name.encode() + b"=", 0
    for entry in block.split(b"\0"):
        if entry.startswith(prefix):
            ctypes.memset(start + offset + len(prefix), 0, len(entry) - len(prefix))
        offset += len(entry) + 1


@contextmanager
def handed_over(env: dict[str, str]):
    """(env, fds) for starting a process that needs the key (the engine `pairlab` starts):
    env without the key, naming the read end of a pipe that holds it; fds to pass on."""
    env = {k: v for k, v in env.items() if k not in (NAME, FD_VARIABLE)}
    key = value()
    if not key:
        yield env, ()
        return
    read_end, write_end = os.pipe()
    os.write(write_end, key.encode())
    os.close(write_end)
    try:
        yield {**env, FD_VARIABLE: str(read_end)}, (read_end,)
    finally:
        os.close(read_end)


def redact(text: str, key: str | None = None) -> str:
    """text without the key (default: value()) in any of its forms, and without anything
    that looks like an Anthropic key."""
    if not text:
        return text
    key = value() if key is None else key.strip()
    if len(key) >= MIN_LENGTH:
        for form in _forms(key):
            text = text.replace(form, REDACTED)
        text = _without_fragments(text, _fragments(key))
    return _LOOKS_LIKE_A_KEY.sub(REDACTED, text)


@lru_cache(maxsize=4)
def _forms(key: str) -> tuple[str, ...]:
    """The key as a run could write it, longest first. base64 and base32 encode groups of 3
    and 5 bytes: the part of the key that encodes the same wherever it sits in a text
    starts at one of 3 (5) offsets."""
    raw = key.encode()
    forms = {key, key[::-1], codecs.encode(key, "rot13"), raw.hex(), raw.hex().upper()}
    for group, encoders in ((3, (base64.b64encode, base64.urlsafe_b64encode)),
                            (5, (base64.b32encode,))):
        for shift in range(group):
            aligned = raw[shift:len(raw) - (len(raw) - shift) % group]
            forms.update(encode(aligned).decode() for encode in encoders)
    return tuple(sorted((f for f in forms if len(f) >= MIN_LENGTH), key=len, reverse=True))


@lru_cache(maxsize=4)
def _fragments(key: str) -> frozenset[str]:
    return frozenset(key[i:i + FRAGMENT] for i in range(len(key) - FRAGMENT + 1))


def _without_fragments(text: str, fragments: frozenset[str]) -> str:
    """Every run of FRAGMENT or more characters of the key replaced by REDACTED."""
    if not fragments or len(text) < FRAGMENT:
        return text
    kept, start, at = [], 0, 0
    while at + FRAGMENT <= len(text):
        if text[at:at + FRAGMENT] not in fragments:
            at += 1
            continue
        end = at + FRAGMENT
        while end < len(text) and text[end - FRAGMENT + 1:end + 1] in fragments:
            end += 1
        kept += [text[start:at], REDACTED]
        start = at = end
    return "".join(kept) + text[start:]
