"""Anthropic's text editor tool (`str_replace_based_edit_tool`) run against a scratch copy.

The model edits an in-memory copy of the target files; the engine later diffs that copy
against the base commit itself, so nothing the model writes as a diff is ever trusted.
Like aider, an edit whose old text matches nowhere or more than once is refused with a
precise message and no fuzzy matching, so the model has to look again and copy exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

TOOL_NAME = "str_replace_based_edit_tool"
COMMANDS = ("view", "str_replace", "insert", "create")
# Lines of context shown around an edit so the model can check what it did.
SNIPPET_CONTEXT = 3


@dataclass
class EditResult:
    """Text for the tool_result block, and whether it reports an error."""

    text: str
    is_error: bool = False
    changed: bool = False         # True when the scratch copy was modified


class EditError(Exception):
    """A refused command; its message goes back to the model as an error tool_result."""


class ScratchEditor:
    """The text editor tool's commands over `files` (path -> text), limited to `targets`."""

    def __init__(self, files: dict[str, str], targets: list[str]):
        self.targets = list(targets)
        self.original = {path: files.get(path, "") for path in self.targets}
        self.files = dict(self.original)

    def changed(self) -> dict[str, str]:
        """The targets whose text differs from the original, with their new text."""
        return {p: t for p, t in self.files.items() if t != self.original[p]}

    def run(self, tool_input: object) -> EditResult:
        try:
            if not isinstance(tool_input, dict):
                raise EditError("The tool input must be a JSON object with a 'command' field.")
            command = tool_input.get("command")
            if command not in COMMANDS:
                raise EditError(
                    f"Unknown or missing command {command!r}; use one of: {', '.join(COMMANDS)}."
                )
            if command == "view":
                return EditResult(self._view(tool_input))
            text = getattr(self, "_" + command)(tool_input)
            return EditResult(text, changed=True)
        except EditError as err:
            return EditResult(str(err), is_error=True)

    # ---- commands ---------------------------------------------------------------------

    def _view(self, args: dict) -> str:
        raw_path = _required_str(args, "path")
        if _normalise(raw_path) in ("", "."):
            return "Files you can view and edit:\n" + "\n".join(self.targets)
        path = self._target(raw_path, "view")
        lines = self.files[path].splitlines()
        view_range = args.get("view_range")
        if view_range is None:
            return _numbered(lines, 1) if lines else f"{path} is empty."
        if (not isinstance(view_range, list) or len(view_range) != 2
                or not all(isinstance(n, int) and not isinstance(n, bool) for n in view_range)):
            raise EditError("view_range must be a list of two integers [start, end]; end may be -1.")
        start, end = view_range
        if not 1 <= start <= max(len(lines), 1):
            raise EditError(
                f"view_range start {start} is out of range: {path} has {len(lines)} lines "
                f"(lines are numbered from 1)."
            )
        if end == -1 or end > len(lines):
            end = len(lines)
        if end < start:
            raise EditError(f"view_range end {end} is before start {start}.")
        return _numbered(lines[start - 1:end], start)

    def _str_replace(self, args: dict) -> str:
        path = self._target(_required_str(args, "path"), "edit")
        old = _required_str(args, "old_str")
        new = args.get("new_str", "")
        if not isinstance(new, str):
            raise EditError("new_str must be a string.")
        if old == "":
            raise EditError("old_str is empty; copy the exact text to replace from the file.")
        text = self.files[path]
        starts = _occurrences(text, old)
        if not starts:
            raise EditError(
                f"No match for old_str in {path}; view the file and copy the text exactly "
                f"(whitespace and indentation included)."
            )
        if len(starts) > 1:
            line_numbers = ", ".join(str(text.count("\n", 0, s) + 1) for s in starts)
            raise EditError(
                f"old_str matches {len(starts)} times in {path} (at lines {line_numbers}); "
                f"include more surrounding lines so it matches exactly once."
            )
        at = starts[0]
        self.files[path] = text[:at] + new + text[at + len(old):]
        first = text.count("\n", 0, at) + 1
        return self._edited(path, first, first + new.count("\n"))

    def _insert(self, args: dict) -> str:
        path = self._target(_required_str(args, "path"), "edit")
        line = args.get("insert_line")
        if not isinstance(line, int) or isinstance(line, bool):
            raise EditError("Missing or invalid insert_line: give the line number to insert after "
                            "(0 inserts at the top of the file).")
        # text_editor_20250728 names the text insert_text; older versions called it new_str.
        new = args.get("insert_text", args.get("new_str"))
        if not isinstance(new, str):
            raise EditError("Missing required parameter insert_text for command insert.")
        lines = self.files[path].splitlines(keepends=True)
        if not 0 <= line <= len(lines):
            raise EditError(
                f"insert_line {line} is out of range: {path} has {len(lines)} lines, "
                f"so insert_line must be between 0 and {len(lines)}."
            )
        if lines and not lines[-1].endswith("\n") and line == len(lines):
            lines[-1] += "\n"
        block = new if new.endswith("\n") else new + "\n"
        self.files[path] = "".join(lines[:line]) + block + "".join(lines[line:])
        return self._edited(path, line + 1, line + block.count("\n"))

    def _create(self, args: dict) -> str:
        raw_path = _required_str(args, "path")
        path = _normalise(raw_path)
        if path not in self.targets:
            raise EditError(
                f"Cannot create {raw_path}: only the existing target files "
                f"({', '.join(self.targets)}) may be written. Edit them in place instead."
            )
        text = _required_str(args, "file_text")
        self.files[path] = text
        return f"{path} was overwritten with the new text ({len(text.splitlines())} lines)."

    # ---- helpers ----------------------------------------------------------------------

    def _target(self, raw_path: str, verb: str) -> str:
        path = _normalise(raw_path)
        if path not in self.targets:
            raise EditError(
                f"{raw_path} is not a file you may {verb}; the targets are: "
                f"{', '.join(self.targets)}. The harness and every other file are read-only."
            )
        return path

    def _edited(self, path: str, first: int, last: int) -> str:
        lines = self.files[path].splitlines()
        lo = max(first - SNIPPET_CONTEXT, 1)
        hi = min(last + SNIPPET_CONTEXT, len(lines))
        return (f"The file {path} has been edited. Lines {lo}-{hi} now read:\n"
                + _numbered(lines[lo - 1:hi], lo)
                + "\nCheck the edit; view the file again if it is not what you meant.")


def describe(tool_input: object) -> str:
    """One line saying what an editor call does, for the reasoning panel."""
    if not isinstance(tool_input, dict):
        return "edit (malformed input)"
    command = tool_input.get("command", "?")
    path = tool_input.get("path", "?")
    if command == "str_replace":
        old = _first_line(tool_input.get("old_str"))
        new = _first_line(tool_input.get("new_str"))
        return f"str_replace {path}: {old!r} -> {new!r}"
    if command == "insert":
        return f"insert {path} after line {tool_input.get('insert_line')}"
    if command == "view" and tool_input.get("view_range"):
        return f"view {path} {tool_input['view_range']}"
    return f"{command} {path}"


def _first_line(value: object, limit: int = 60) -> str:
    text = value.splitlines()[0] if isinstance(value, str) and value else ""
    return text if len(text) <= limit else text[:limit] + "…"


def _required_str(args: dict, name: str) -> str:
    value = args.get(name)
    if not isinstance(value, str):
        command = args.get("command")
        raise EditError(f"Missing required parameter {name} (a string) for command {command}.")
    return value


def _normalise(path: str) -> str:
    """'./train.py', '/train.py' and 'train.py' all name the target train.py."""
    path = path.strip()
    while path.startswith("./"):
        path = path[2:]
    return path.lstrip("/")


def _occurrences(text: str, needle: str) -> list[int]:
    """Start offsets of every occurrence, overlapping ones included."""
    starts, at = [], text.find(needle)
    while at != -1:
        starts.append(at)
        at = text.find(needle, at + 1)
    return starts


def _numbered(lines: list[str], first: int) -> str:
    return "\n".join(f"{n:6}\t{line}" for n, line in enumerate(lines, first))
