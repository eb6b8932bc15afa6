"""train.py's own checks, evaluated before a candidate is proposed.

The template guards its configuration with module-level asserts (e.g. TOTAL_BATCH_SIZE must
be a whole number of micro-batches of DEVICE_BATCH_SIZE x MAX_SEQ_LEN). A candidate that
fails one would only crash after start-up, so the tuner evaluates them on the candidate's
text first. They are read from the file itself with ast, so a changed template stays
covered. Names resolve through the file's earlier module-level assignments, then the names
it imports: the harness's settings (`from nanochat.harness import ...` or `harness.NAME`),
computed from the harness source for this device and the run's environment
(PAIRLAB_SEQ_LEN...), and the literal constants of a workspace module such as an adopted
autoresearch's `from prepare import MAX_SEQ_LEN`. A check that uses anything else (a
function call, a tensor) cannot be evaluated here and is left to the run.
"""

from __future__ import annotations

import ast
import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
           ast.Pow: operator.pow}
_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt,
            ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
            ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b}
_CALLS = {"int": int, "float": float, "min": min, "max": max, "abs": abs, "len": len,
          "set": set}


class _Unknown(Exception):
    """The expression needs something only the run has."""


@dataclass(frozen=True)
class Violation:
    line: int          # 1-based line of the assert
    message: str       # the assert's own message, else its source


def harness_settings(harness_source: str, device: str, env: Mapping[str, str]) -> dict:
    """The harness's module-level settings that train.py may read, as this run sees them:
    `NAME = _env_number("VAR", type, default)` with VAR from `env`, else the default."""
    values: dict = {"DEVICE": device, "CPU": device == "cpu"}
    try:
        tree = ast.parse(harness_source)
    except SyntaxError:
        return values
    for stmt in tree.body:
        if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
                and isinstance(stmt.targets[0], ast.Name) and isinstance(stmt.value, ast.Call)
                and isinstance(stmt.value.func, ast.Name)
                and stmt.value.func.id == "_env_number" and len(stmt.value.args) == 3):
            continue
        var, kind, default = stmt.value.args
        try:
            name = _evaluate(var, _unknown)
            if name in env:
                convert = _CALLS[kind.id] if isinstance(kind, ast.Name) else None
                values[stmt.targets[0].id] = convert(env[name]) if convert else env[name]
            else:
                values[stmt.targets[0].id] = _evaluate(default, values.__getitem__)
        except (_Unknown, KeyError, ValueError, TypeError):
            continue
    return values


def workspace_settings(source: str, workspace: Path) -> dict:
    """Literal module-level constants of the workspace modules `source` imports from
    (`from prepare import MAX_SEQ_LEN`, with prepare.py in the workspace root)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}
    values: dict = {}
    for stmt in tree.body:
        if not (isinstance(stmt, ast.ImportFrom) and stmt.module and stmt.level == 0):
            continue
        path = Path(workspace, *stmt.module.split(".")).with_suffix(".py")
        try:
            module = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue
        constants = {}
        for node in module.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                    and isinstance(node.targets[0], ast.Name):
                try:
                    constants[node.targets[0].id] = _evaluate(node.value, constants.__getitem__)
                except (_Unknown, KeyError, ArithmeticError, TypeError, ValueError):
                    continue
        for alias in stmt.names:
            if alias.name in constants:
                values[alias.asname or alias.name] = constants[alias.name]
    return values


def violations(source: str, imported: Mapping[str, object]) -> list[Violation]:
    """The module-level asserts of `source` that evaluate to false; unevaluable ones pass.
    `imported`: values of the names it imports (harness_settings, workspace_settings)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    imported_names = _imported_names(tree)
    assigned: dict[str, ast.expr] = {}
    found = []
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 \
                and isinstance(stmt.targets[0], ast.Name):
            assigned[stmt.targets[0].id] = stmt.value
        elif isinstance(stmt, ast.Assert):
            resolve = _resolver(dict(assigned), imported_names, imported)
            try:
                holds = bool(_evaluate(stmt.test, resolve))
            except (_Unknown, ArithmeticError, TypeError, ValueError, RecursionError):
                continue
            if not holds:
                message = stmt.msg.value if isinstance(stmt.msg, ast.Constant) \
                    else ast.unparse(stmt.test)
                found.append(Violation(stmt.lineno, str(message)))
    return found


def _imported_names(tree: ast.Module) -> set[str]:
    names = set()
    for stmt in tree.body:
        if isinstance(stmt, ast.ImportFrom):
            names |= {alias.asname or alias.name for alias in stmt.names}
    return names


def _resolver(assigned: dict[str, ast.expr], imported_names: set[str], imported: Mapping):
    cache: dict = {}
    active: set[str] = set()     # being resolved: a self-reference is unknown, not a loop

    def resolve(name: str):
        if name in cache:
            return cache[name]
        if name in assigned and name not in active:
            active.add(name)
            try:
                value = _evaluate(assigned[name], resolve)
            finally:
                active.discard(name)
        elif name in imported_names and name in imported:
            value = imported[name]
        elif name.startswith("harness.") and name[len("harness."):] in imported:
            value = imported[name[len("harness."):]]
        else:
            raise _Unknown(name)
        cache[name] = value
        return value
    return resolve


def _unknown(name: str):
    raise _Unknown(name)


def _evaluate(node: ast.expr, resolve):
    """Arithmetic, comparisons and a few builtins over literals and resolved names."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return resolve(node.id)
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
            and node.value.id == "harness":
        return resolve(f"harness.{node.attr}")
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        items = [_evaluate(e, resolve) for e in node.elts]
        return set(items) if isinstance(node, ast.Set) else tuple(items)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _BINARY[type(node.op)](_evaluate(node.left, resolve),
                                      _evaluate(node.right, resolve))
    if isinstance(node, ast.UnaryOp):
        value = _evaluate(node.operand, resolve)
        ops = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_}
        if type(node.op) in ops:
            return ops[type(node.op)](value)
    if isinstance(node, ast.BoolOp):
        values = (_evaluate(v, resolve) for v in node.values)
        return all(values) if isinstance(node.op, ast.And) else any(values)
    if isinstance(node, ast.Compare) and all(type(op) in _COMPARE for op in node.ops):
        left = _evaluate(node.left, resolve)
        for op, right_node in zip(node.ops, node.comparators):
            right = _evaluate(right_node, resolve)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.IfExp):
        return _evaluate(node.body if _evaluate(node.test, resolve) else node.orelse, resolve)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
            and node.func.id in _CALLS and not node.keywords:
        return _CALLS[node.func.id](*(_evaluate(a, resolve) for a in node.args))
    raise _Unknown(ast.unparse(node))
