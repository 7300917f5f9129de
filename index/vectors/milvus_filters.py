"""Metadata filters as Milvus expressions over the ``metadata`` JSON field, with the
meaning ``index.filter_tree`` gives them (and the same answers as SQLite's, tested).

Every value is a literal with each quote, backslash and line break escaped, so no input
leaves its literal. Milvus needs two helpers kept beside each vector: ``null_keys`` (its
``is null`` also matches a missing key) and ``bool_keys`` (it compares ``true`` equal to
``1``). Each condition is guarded by ``exists``, so it is false, never unknown, for an item
without the key, and ``not`` negates it exactly; ``in`` on a JSON path is not in Milvus's
grammar, so membership is a disjunction of equalities.
"""

from __future__ import annotations

import math
from typing import Any

from index.filter_tree import All, Any_, Cond, Node, Not, kind

_OPS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


def literal(value: Any) -> str:
    """``value`` (a checked JSON scalar) as a Milvus expression literal."""
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("not a finite number")
        return repr(value)
    if isinstance(value, str):
        escaped = (
            value.replace("\\", "\\\\")
            .replace('"', '\\"')
            .replace("\n", "\\n")
            .replace("\r", "\\r")
            .replace("\t", "\\t")
        )
        return f'"{escaped}"'
    raise TypeError(f"{type(value).__name__} is not a filter value")


def filter_expression(where: Node) -> str:
    """A metadata filter as a Milvus expression (``InvalidFilter`` for a bad filter)."""
    return expression(where)


def expression(node: Node) -> str:
    if isinstance(node, (All, Any_)):
        joiner = " and " if isinstance(node, All) else " or "
        return "(" + joiner.join(expression(n) for n in node.nodes) + ")"
    if isinstance(node, Not):
        return f"not {expression(node.node)}"
    return _cond(node)


def _cond(cond: Cond) -> str:
    key = literal(cond.key)
    path = f"metadata[{key}]"
    if cond.op == "exists":
        return f"(exists {path} or json_contains(null_keys, {key}))"
    if cond.op == "in":
        return "(" + " or ".join(_equals(key, path, v) for v in cond.value) + ")"
    if cond.op == "eq":
        return _equals(key, path, cond.value)
    guard = _kind_guard(key, path, cond.value)
    return f"({guard} and {path} {_OPS[cond.op]} {literal(cond.value)})"


def _equals(key: str, path: str, value: Any) -> str:
    if value is None:
        return f"json_contains(null_keys, {key})"
    return f"({_kind_guard(key, path, value)} and {path} == {literal(value)})"


def _kind_guard(key: str, path: str, value: Any) -> str:
    """True where the key holds a value of ``value``'s kind that Milvus could confuse."""
    if kind(value) == "bool":
        return f"json_contains(bool_keys, {key})"
    if kind(value) == "number":
        return f"(exists {path} and not json_contains(bool_keys, {key}))"
    return f"exists {path}"  # strings compare only with strings


def null_keys(metadata: dict[str, Any]) -> list[str]:
    """The top-level keys of ``metadata`` whose value is null."""
    return [key for key, value in metadata.items() if value is None]


def bool_keys(metadata: dict[str, Any]) -> list[str]:
    """The top-level keys of ``metadata`` whose value is true or false."""
    return [key for key, value in metadata.items() if isinstance(value, bool)]
