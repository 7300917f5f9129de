"""Log lines: JSON for machines, a readable line at a terminal, library noise at debug."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from app.service import logs


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name in logs.NOISY:
        logging.getLogger(name).setLevel(logging.NOTSET)


def test_auto_format_is_json_off_a_terminal_and_text_at_one() -> None:
    piped, terminal = io.StringIO(), Terminal()
    logs.configure("info", "auto", piped)
    logging.getLogger("xmodal.test").info("hello %s", "there")
    assert json.loads(piped.getvalue())["message"] == "hello there"
    logs.configure("info", "auto", terminal)
    logging.getLogger("xmodal.test").info("hello %s", "there")
    line = terminal.getvalue().strip()
    assert line.endswith("INFO xmodal.test: hello there") and not line.startswith("{")


def test_library_info_lines_show_at_debug_only() -> None:
    out = io.StringIO()
    logs.configure("info", "json", out)
    logging.getLogger("faiss.loader").info("Loading faiss with AVX2 support.")
    logging.getLogger("httpx").info("HTTP Request: GET http://x")
    logging.getLogger("faiss.loader").warning("a real problem")
    assert [json.loads(x)["message"] for x in out.getvalue().splitlines()] == ["a real problem"]
    out = io.StringIO()
    logs.configure("debug", "json", out)
    logging.getLogger("faiss.loader").info("Loading faiss with AVX2 support.")
    assert "AVX2" in out.getvalue()
