"""Metadata filters, parsed once into a tree that each backend turns into its own query.

A filter is a JSON object whose entries must all hold:

- ``"key": value`` (a scalar): the key holds that value;
- ``"key": {"$op": operand, ...}``: every operator holds, with ``$eq``, ``$ne``, ``$gt``,
  ``$gte``, ``$lt``, ``$lte``, ``$in``, ``$nin`` and ``$exists``;
- ``"$and": [filter, ...]`` and ``"$or": [filter, ...]``, nested at most ``MAX_DEPTH`` deep.

Values are typed, as in JSON: a number equals a number (``1`` equals ``1.0``), a string a
string, a boolean a boolean (``true`` is not ``1``), ``null`` a stored null. Order
comparisons take numbers or strings (strings by code point) and match stored values of the
same kind only; one key's comparisons must not mix the two (400). ``$ne`` and ``$nin`` are
the negations of ``$eq`` and ``$in``: they also match items without the key, as MongoDB's
do. ``$exists: true`` matches a key that is present, even holding null.

Keys starting with ``$`` are operators; any other key is a metadata key as stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from index.errors import InvalidFilter
from index.values import InvalidValue, check_key, check_scalar

MAX_DEPTH = 8  # nested $and / $or
MAX_CONDITIONS = 256  # leaves in one filter
MAX_IN = 512  # values of one $in / $nin
MAX_VALUES = 4096  # values in one filter, all together (each is a bound SQL parameter)
MAX_LIST = 64  # filters in one $and / $or

COMPARISONS = ("$gt", "$gte", "$lt", "$lte")
OPERATORS = ("$eq", "$ne", *COMPARISONS, "$in", "$nin", "$exists")

Scalar = str | int | float | bool | None


@dataclass(frozen=True)
class Cond:
    """One test of one key: ``op`` is ``eq``, ``gt``, ``gte``, ``lt``, ``lte``, ``in`` or
    ``exists`` (``$ne`` and ``$nin`` parse as ``Not`` of ``eq`` and ``in``)."""

    key: str
    op: str
    value: Any  # a scalar; a tuple of scalars for ``in``; a bool for ``exists``


@dataclass(frozen=True)
class Not:
    node: Node


@dataclass(frozen=True)
class All:
    nodes: tuple[Node, ...]


@dataclass(frozen=True)
class Any_:
    nodes: tuple[Node, ...]


Node = Cond | Not | All | Any_


def kind(value: Scalar) -> str:
    """A scalar's kind for comparisons: bool, number, string or null."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return "string"


Filter = Node | dict[str, Any]  # a parsed tree, or a filter as JSON (parsed where it enters)


def as_tree(where: Filter | None) -> Node | None:
    """``where`` as a tree: parsed if it is still JSON (at the store's door, for callers
    in this process), as it is if a caller parsed it already (the service does, once).
    An empty filter is no filter (None)."""
    if isinstance(where, (Cond, Not, All, Any_)):
        return where
    return parse(where) if where else None


def parse(where: Any) -> Node:
    """The tree of a filter, or ``InvalidFilter`` naming the part that is wrong."""
    parser = _Parser()
    try:
        return parser.filter(where, "filter", 0)
    except InvalidValue as exc:
        raise InvalidFilter(str(exc)) from None


class _Parser:
    def __init__(self) -> None:
        self.conditions = 0
        self.values = 0

    def filter(self, where: Any, at: str, depth: int) -> Node:
        if not isinstance(where, dict):
            raise InvalidValue(f"{at} must be a JSON object")
        if depth > MAX_DEPTH:
            raise InvalidValue(f"{at}: $and and $or nest at most {MAX_DEPTH} deep")
        nodes: list[Node] = []
        for key, value in where.items():
            if not isinstance(key, str):
                raise InvalidValue(f"{at}: keys must be strings")
            if key in ("$and", "$or"):
                nodes.append(self.group(key, value, f"{at}.{key}", depth))
            elif key.startswith("$"):
                raise InvalidValue(
                    f"{at}: unknown operator {key!r} here (only $and and $or combine filters; "
                    "the others go inside a key's object)"
                )
            else:
                check_key(key, "filter")
                nodes.extend(self.key(key, value, f"{at}[{key!r}]"))
        return nodes[0] if len(nodes) == 1 else All(tuple(nodes))

    def group(self, op: str, value: Any, at: str, depth: int) -> Node:
        if not isinstance(value, list) or not value:
            raise InvalidValue(f"{at} takes a non-empty list of filters")
        if len(value) > MAX_LIST:
            raise InvalidValue(f"{at} takes at most {MAX_LIST} filters, got {len(value)}")
        nodes = tuple(self.filter(f, f"{at}[{i}]", depth + 1) for i, f in enumerate(value))
        return All(nodes) if op == "$and" else Any_(nodes)

    def count(self, at: str) -> None:
        self.conditions += 1
        if self.conditions > MAX_CONDITIONS:
            raise InvalidValue(f"{at}: a filter holds at most {MAX_CONDITIONS} conditions")

    def key(self, key: str, value: Any, at: str) -> list[Node]:
        if not isinstance(value, dict):
            if isinstance(value, list):
                raise InvalidValue(
                    f"filter value for {key!r} must be a string, number, boolean or null "
                    '(for several values: {"$in": [...]})'
                )
            self.count(at)
            return [Cond(key, "eq", self.scalar(value, key))]
        if not value:
            raise InvalidValue(f"{at}: an empty object tests nothing; give an operator")
        unknown = [op for op in value if op not in OPERATORS]
        if unknown:
            raise InvalidValue(
                f"{at}: unknown operator {unknown[0]!r} (operators: {', '.join(OPERATORS)})"
            )
        ranged = {kind(v) for op, v in value.items() if op in COMPARISONS}
        nodes: list[Node] = []
        for op, operand in value.items():
            self.count(at)
            where = f"{at}.{op}"
            if op in ("$eq", "$ne"):
                cond = Cond(key, "eq", self.scalar(operand, key))
                nodes.append(cond if op == "$eq" else Not(cond))
            elif op in COMPARISONS:
                checked = self.scalar(operand, key)
                if kind(checked) not in ("number", "string"):
                    raise InvalidValue(f"{where} compares numbers or strings, not {kind(checked)}")
                if len(ranged) > 1:
                    raise InvalidValue(
                        f"filter for {key!r} compares with numbers and strings at once"
                    )
                nodes.append(Cond(key, op[1:], checked))
            elif op in ("$in", "$nin"):
                if not isinstance(operand, list) or not operand:
                    raise InvalidValue(f"{where} takes a non-empty list of values")
                if len(operand) > MAX_IN:
                    raise InvalidValue(f"{where} takes at most {MAX_IN} values")
                self.values += len(operand)
                if self.values > MAX_VALUES:
                    raise InvalidValue(
                        f"{where}: a filter holds at most {MAX_VALUES} values in all"
                    )
                values = tuple(dict.fromkeys(self.scalar(v, key) for v in operand))
                cond = Cond(key, "in", values)
                nodes.append(cond if op == "$in" else Not(cond))
            else:  # $exists
                if not isinstance(operand, bool):
                    raise InvalidValue(f"{where} takes true or false")
                cond = Cond(key, "exists", True)
                nodes.append(cond if operand else Not(cond))
        return nodes

    @staticmethod
    def scalar(value: Any, key: str) -> Scalar:
        if isinstance(value, (dict, list)):
            raise InvalidValue(
                f"filter value for {key!r} must be a string, number, boolean or null"
            )
        check_scalar(value, f"filter value for {key!r}")
        return value


def keys_of(node: Node) -> set[str]:
    """The metadata keys a filter tests."""
    if isinstance(node, (All, Any_)):
        return set().union(*(keys_of(n) for n in node.nodes))
    if isinstance(node, Not):
        return keys_of(node.node)
    return {node.key}


def matches(node: Node, metadata: dict[str, Any]) -> bool:
    """Whether ``metadata`` passes ``node``: the reference the backends are tested against."""
    if isinstance(node, All):
        return all(matches(n, metadata) for n in node.nodes)
    if isinstance(node, Any_):
        return any(matches(n, metadata) for n in node.nodes)
    if isinstance(node, Not):
        return not matches(node.node, metadata)
    if node.key not in metadata:
        return False
    stored = metadata[node.key]
    if node.op == "exists":
        return True
    if isinstance(stored, list):
        # A list holds when one of its values does (its lists and objects never do), so
        # {"labels": "red"} keeps the items labelled red, and $ne / $nin (a negation)
        # keep those where none is.
        return any(_holds(node, v) for v in stored if not isinstance(v, (dict, list)))
    if isinstance(stored, dict):
        return False
    return _holds(node, stored)


def _holds(node: Cond, stored: Scalar) -> bool:
    """Whether one stored scalar passes a condition."""
    if node.op == "in":
        return any(_equal(stored, v) for v in node.value)
    if node.op == "eq":
        return _equal(stored, node.value)
    if kind(stored) != kind(node.value):
        return False
    a, b = stored, node.value
    return {"gt": a > b, "gte": a >= b, "lt": a < b, "lte": a <= b}[node.op]


def _equal(stored: Any, value: Scalar) -> bool:
    return kind(stored) == kind(value) and stored == value
