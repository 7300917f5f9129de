"""The ``xmodal`` command: ``commands`` (what each does), ``client`` (HTTP, shared with the
demo), ``render`` (what it prints)."""

from app.cli.commands import main

__all__ = ["main"]
