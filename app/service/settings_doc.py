"""The settings reference in docs/configuration.md, generated from ``Settings``:
``python -m app.service.settings_doc`` prints it (a test keeps the page equal to it)."""

from __future__ import annotations

from app.service.config import Settings

# The sections of the settings reference, each named at its first setting.
SECTIONS = {
    "model": "Model",
    "host": "Server",
    "api_keys": "Access",
    "max_batch_size": "Batching",
    "max_upload_bytes": "Limits",
    "import_root": "Batch indexing",
    "database_url": "Storage and scale-out",
}


def settings_table() -> str:
    """The Markdown reference of every setting, a table per section, as docs show it."""
    rows: list[str] = []
    for name, field in Settings.model_fields.items():
        if name in SECTIONS:
            if rows:
                rows.append("")
            rows += [
                f"### {SECTIONS[name]}",
                "",
                "| variable | default | meaning |",
                "|---|---|---|",
            ]
        if field.default_factory is not None:
            default = {"decode_workers": "number of CPUs, at most 8"}.get(name, "none")
        else:
            default = "unset" if field.default is None else str(field.default)
        rows.append(f"| `XMODAL_{name.upper()}` | `{default}` | {field.description or ''} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(settings_table(), end="")
