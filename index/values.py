"""What the store accepts as ids, texts, metadata and filter values.

JSON (and Python) allow values that SQLite and its JSON functions cannot use: NaN and
Infinity (stored as text that ``json_extract`` then refuses, so every filtered search on
the collection failed), lone surrogates (not encodable as UTF-8), integers beyond 64 bits,
a NUL inside a JSON path, nesting deep enough to exhaust the interpreter's stack. Every
value is checked here before anything is written, by the store itself, whatever called it.
"""

from __future__ import annotations

import math
from typing import Any

from index.errors import StoreError

MAX_DEPTH = 32  # nested objects and arrays in one metadata value
MAX_KEY_CHARS = 256
INT64 = (-(2**63), 2**63 - 1)


class InvalidValue(StoreError):
    """A value the store cannot keep or search on faithfully."""


def check_text(value: str, what: str) -> None:
    """A string SQLite can store: UTF-8 encodable (no lone surrogates)."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidValue(
                f"{what} holds a lone surrogate (at character {exc.start}): not valid unicode"
            ) from None


# An item's URL is /items/{id}, its image's /items/{id}/image: an id ending so would name
# another item's image instead of itself.
RESERVED_ID_ENDINGS = ("/image", "/thumbnail")


def check_id(value: str, what: str = "an id") -> None:
    """Ids travel in URL paths: no control characters (a newline could never be fetched),
    no ``.`` or ``..`` segment (clients resolve them away), no ending an item URL's
    sub-resource has."""
    check_text(value, what)
    bad = next((ch for ch in value if ord(ch) < 32 or ord(ch) == 127), None)
    if bad is not None:
        raise InvalidValue(f"{what} holds the control character {bad!r}: not allowed in ids")
    if any(segment in (".", "..") for segment in value.split("/")):
        raise InvalidValue(f"{what} has a '.' or '..' segment, which URLs resolve away")
    ending = next((e for e in RESERVED_ID_ENDINGS if value.endswith(e)), None)
    if ending is not None:
        raise InvalidValue(
            f"{what} ends in {ending!r}: its URL would name another item's {ending[1:]}"
        )


def check_key(key: Any, what: str) -> None:
    if not isinstance(key, str):
        raise InvalidValue(f"{what}: keys are strings")
    check_text(key, what)
    if "\x00" in key:
        raise InvalidValue(f"{what}: a key holds a NUL character")
    if not key or len(key) > MAX_KEY_CHARS:
        raise InvalidValue(f"{what}: keys are 1 to {MAX_KEY_CHARS} characters")


def check_scalar(value: Any, what: str) -> None:
    """A JSON scalar the store can compare: finite numbers, 64-bit integers, valid text."""
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int):
        if not INT64[0] <= value <= INT64[1]:
            raise InvalidValue(f"{what}: integers must fit in 64 bits")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidValue(f"{what}: numbers must be finite (no NaN or Infinity)")
    elif isinstance(value, str):
        check_text(value, what)
        if "\x00" in value:
            # SQLite's JSON functions end a string at a NUL: it could be stored, never matched.
            raise InvalidValue(f"{what}: a string holds a NUL character")
    else:
        raise InvalidValue(f"{what}: {type(value).__name__} is not a JSON value")


def check_json(value: Any, what: str) -> None:
    """A JSON value (objects, arrays, scalars) the store can keep and search on."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth >= MAX_DEPTH:
                raise InvalidValue(f"{what} is nested more than {MAX_DEPTH} levels deep")
            if isinstance(node, dict):
                for key, child in node.items():
                    check_key(key, what)
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in node)
        else:
            check_scalar(node, what)


def check_metadata(metadata: Any, what: str = "metadata") -> None:
    if not isinstance(metadata, dict):
        raise InvalidValue(f"{what} must be a JSON object")
    check_json(metadata, what)


def check_item(item_id: str, text: str | None, metadata: Any) -> None:
    """Everything of one new item the store keeps besides its vector and image."""
    check_id(item_id, "an id")
    if len(item_id) > 512:
        raise InvalidValue(f"ids are at most 512 characters, got {len(item_id)}")
    if text is not None:
        check_text(text, f"the text of {item_id!r}")
        if "\x00" in text:
            # The API refuses it in any string; a source file or an archive could carry
            # one, and PostgreSQL's text cannot hold it: refused alike on both catalogues.
            raise InvalidValue(f"the text of {item_id!r} holds a NUL character")
    check_metadata(metadata, f"the metadata of {item_id!r}")
