from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.service.config import Settings
from app.service.settings_doc import settings_table
from tests.helpers import REPO


def test_settings_reference_matches_the_settings_class() -> None:
    readme = (REPO / "docs" / "configuration.md").read_text()
    start, end = "<!-- settings:start -->\n", "<!-- settings:end -->"
    documented = readme[readme.index(start) + len(start) : readme.index(end)]
    assert documented == settings_table(), "regenerate with: python -m app.service.settings_doc"
    for name in Settings.model_fields:
        assert f"`XMODAL_{name.upper()}`" in documented


def test_settings_are_few_and_grouped() -> None:
    """At most 46 settings, each under a section an operator reads (tuning knobs nobody
    turns are constants beside the code they tune)."""
    from app.service.settings_doc import SECTIONS

    names = list(Settings.model_fields)
    assert len(names) <= 46, len(names)
    assert names[0] in SECTIONS and set(SECTIONS) <= set(names)


def test_milvus_credentials_come_from_the_uri_and_leave_it() -> None:
    """Milvus auth (``user:password`` or an API key) rides in the URI's user part, as a
    database URL's does; the URI handed to Milvus carries no secret."""
    plain = Settings(milvus_uri="http://milvus:19530")
    assert plain.milvus_target == ("http://milvus:19530", None)
    auth = Settings(milvus_uri="https://root:Mil%40vus@milvus.internal:19530")
    assert auth.milvus_target == ("https://milvus.internal:19530", "root:Mil@vus")
    key = Settings(milvus_uri="https://abc123@in01.zillizcloud.com")
    assert key.milvus_target == ("https://in01.zillizcloud.com", "abc123")
    assert Settings(milvus_uri="/data/milvus.db").milvus_target == ("/data/milvus.db", None)


def test_a_shared_dir_holds_what_every_server_reaches(tmp_path: Path) -> None:
    """Unset, everything lives in the data dir; set, what servers share moves there and
    a Milvus Lite file (one process's) is refused."""
    alone = Settings(data_dir=tmp_path / "d")
    assert alone.shared_root == tmp_path / "d"
    assert alone.import_root_dir == tmp_path / "d" / "import"
    shared = Settings(data_dir=tmp_path / "d", shared_dir=tmp_path / "s")
    assert shared.shared_root == tmp_path / "s"
    assert shared.import_root_dir == tmp_path / "s" / "import"
    assert shared.model_cache_dir == tmp_path / "s" / "models"
    with pytest.raises(ValidationError, match="Milvus Lite file serves one process"):
        Settings(shared_dir=tmp_path / "s", vector_backend="milvus")
    server = Settings(shared_dir=tmp_path / "s", vector_backend="milvus", milvus_uri="http://m:1")
    assert server.milvus_target == ("http://m:1", None)
