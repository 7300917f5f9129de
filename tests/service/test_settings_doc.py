from __future__ import annotations

from app.service.config import Settings, settings_table
from tests.helpers import REPO


def test_settings_reference_matches_the_settings_class() -> None:
    readme = (REPO / "docs" / "configuration.md").read_text()
    start, end = "<!-- settings:start -->\n", "<!-- settings:end -->"
    documented = readme[readme.index(start) + len(start) : readme.index(end)]
    assert documented == settings_table(), "regenerate with: python -m app.service.config"
    for name in Settings.model_fields:
        assert f"`XMODAL_{name.upper()}`" in documented


def test_settings_are_few_and_grouped() -> None:
    """At most 46 settings, each under a section an operator reads (tuning knobs nobody
    turns are constants beside the code they tune)."""
    from app.service.config import SECTIONS

    names = list(Settings.model_fields)
    assert len(names) <= 46, len(names)
    assert names[0] in SECTIONS and set(SECTIONS) <= set(names)
