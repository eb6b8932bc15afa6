"""train.py's literal constants: `NAME = literal` (or `cpu if CPU else gpu`) at module level,
read as one device sees them and rewritten one literal at a time, so each change is a one-line
diff that keeps comments. The offline tuner, the promotion ladder and the doctor use them."""

from __future__ import annotations

import ast
from collections import Counter
from dataclasses import dataclass

from engine.base.protected import PROTECTED_BEGIN, PROTECTED_END


@dataclass(frozen=True)
class Constant:
    """A module-level `NAME = literal` (or `cpu if CPU else gpu`): this device's literal."""

    name: str
    value: object
    text: str               # source text of the literal on this device's branch
    line: int               # 0-based line index
    start: int              # character offsets of the literal within that line
    end: int
    conditional: bool       # True for `cpu_value if CPU else gpu_value`


def parse_constants(source: str, device: str = "cpu") -> dict[str, Constant]:
    """The literal constants of a module, as seen on `device`; names assigned twice are left out."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    fenced = _fenced_lines(lines)
    assigned: Counter[str] = Counter()
    found: dict[str, Constant] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign):
            targets, node = stmt.targets, stmt.value
        elif isinstance(stmt, (ast.AnnAssign, ast.AugAssign)):
            targets, node = [stmt.target], stmt.value
        else:
            continue
        names = [t.id for t in targets if isinstance(t, ast.Name)]
        assigned.update(names)
        if isinstance(stmt, ast.AugAssign) or len(targets) != 1 or len(names) != 1 or node is None:
            continue
        literal, conditional = _device_branch(node, device)
        if literal is None or literal.lineno != literal.end_lineno:
            continue
        value = _literal(literal)
        row = literal.lineno - 1
        if value is None or row in fenced:
            continue
        encoded = lines[row].encode()
        start = len(encoded[:literal.col_offset].decode())
        end = len(encoded[:literal.end_col_offset].decode())
        found[names[0]] = Constant(names[0], value, lines[row][start:end], row, start, end,
                                   conditional)
    return {name: c for name, c in found.items() if assigned[name] == 1}


def rewrite(source: str, constants: dict[str, Constant], changes: dict[str, object]) -> str:
    """Replace only the literals' text, so each change is a one-line diff that keeps comments."""
    lines = source.splitlines(keepends=True)
    for name, value in changes.items():
        c = constants[name]
        line = lines[c.line]
        lines[c.line] = line[:c.start] + format_like(value, c.text) + line[c.end:]
    return "".join(lines)


def format_like(value: object, like: str) -> str:
    """Source text for `value` in the style of the literal it replaces (2**k, 1e-4, quotes)."""
    if isinstance(value, str):
        quote = like[0] if like[:1] in ("'", '"') else '"'
        return f"{quote}{value}{quote}"
    if isinstance(value, tuple):
        return "(" + ", ".join(format_like(v, "") for v in value) + ")"
    if isinstance(value, int):
        if "**" in like and value > 0 and value & (value - 1) == 0:
            power = " ** " if " ** " in like else "**"
            return f"2{power}{value.bit_length() - 1}"
        return f"{value:_}" if "_" in like else str(value)
    if "e" in like.lower() and value != 0:
        mantissa, exponent = f"{value:.2e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return repr(value)


def parse_value(text: str) -> object:
    """A literal as written in a description or a source line, or None."""
    try:
        return _literal(ast.parse(text.strip(), mode="eval").body)
    except SyntaxError:
        return None


def _device_branch(node: ast.expr, device: str) -> tuple[ast.expr | None, bool]:
    if not isinstance(node, ast.IfExp):
        return node, False
    test, negated = node.test, False
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        test, negated = test.operand, True
    if not (isinstance(test, ast.Name) and test.id == "CPU"):
        return None, True
    on_cpu_branch = (device == "cpu") != negated
    return (node.body if on_cpu_branch else node.orelse), True


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _literal(node: ast.expr) -> object:
    """Numbers, 2**k, tuples of numbers and strings; None for anything else."""
    if isinstance(node, ast.Constant):
        value = node.value
        return value if is_number(value) or isinstance(value, str) else None
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal(node.operand)
        if not is_number(value):
            return None
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        base, exponent = _literal(node.left), _literal(node.right)
        if type(base) is int and type(exponent) is int and 0 <= exponent <= 64:
            return base ** exponent
        return None
    if isinstance(node, ast.Tuple) and node.elts:
        items = tuple(_literal(e) for e in node.elts)
        return items if all(is_number(i) for i in items) else None
    return None


def _fenced_lines(lines: list[str]) -> set[int]:
    fenced, inside = set(), False
    for row, line in enumerate(lines):
        if line.strip() == PROTECTED_BEGIN:
            inside = True
        if inside:
            fenced.add(row)
        if line.strip() == PROTECTED_END:
            inside = False
    return fenced
