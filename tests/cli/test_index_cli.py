"""`xmodal index build` and `xmodal jobs`, in-process and against a server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx

from index import CollectionStore, FaissBackends
from tests.corpus import Corpus, write_folder, write_jsonl
from tests.helpers import REPO, AppServer, cli_env, xmodal


def xmodal_process(*args: str, data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``xmodal ARGS`` as a process of its own, exit status and all."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=REPO,
        env={**os.environ, **cli_env(data_dir, env)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_summary(stdout: str, corpus: Corpus) -> None:
    """The job's line: its state, its time and its counts."""
    line = rf"succeeded in [\d,]+\.\d s: {corpus.done} done, {len(corpus.failed)} failed"
    assert re.search(line, stdout), stdout


def split(stdout: str) -> dict[str, tuple[int, ...]]:
    """``images: N new M unchanged K failed`` lines, by kind."""
    rows = re.findall(
        r"^  (images|texts): +([\d,]+) new +([\d,]+) unchanged +([\d,]+) failed$", stdout, re.M
    )
    return {kind: tuple(int(n.replace(",", "")) for n in ns) for kind, *ns in rows}


def test_build_in_process_then_list_jobs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    corpus = write_folder(data / "import", "pics")
    proc = xmodal("index", "build", "pics", "--collection", "local", "--create", data_dir=data)
    assert proc.returncode == 0, proc.stderr
    assert_summary(proc.stdout, corpus)
    # Images and captions apart, new apart from unchanged: the folder's broken files are
    # images that failed.
    failed = len(corpus.failed)
    assert split(proc.stdout) == {
        "images": (len(corpus.images), 0, failed),
        "texts": (len(corpus.texts), 0, 0),
    }
    assert "failed bad/empty.png" in proc.stdout
    assert f"{corpus.total}/{corpus.total}" in proc.stderr  # the progress bar reached the end
    again = xmodal("index", "build", "pics", "--collection", "local", data_dir=data)
    assert again.returncode == 0, again.stderr
    assert split(again.stdout) == {
        "images": (0, len(corpus.images), failed),
        "texts": (0, len(corpus.texts), 0),
    }
    listing = xmodal("jobs", data_dir=data)
    assert listing.returncode == 0
    assert "succeeded" in listing.stdout and "pics" in listing.stdout and "local" in listing.stdout


def test_build_reports_a_bad_source_and_fails(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "import").mkdir(parents=True)
    proc = xmodal_process(
        "index", "build", "../../etc", "--collection", "c", "--create", data_dir=data
    )
    assert proc.returncode == 1 and "outside the import root" in proc.stderr
    assert str((data / "import").resolve()) in proc.stderr  # names the root
    assert "Traceback" not in proc.stderr
    proc = xmodal("index", "build", "x.jsonl", "--collection", "missing", data_dir=data)
    assert proc.returncode == 1 and "does not exist" in proc.stderr
    # --create with a bad source creates nothing.
    proc = xmodal("index", "build", "x.jsonl", "--collection", "fresh", "--create", data_dir=data)
    assert proc.returncode == 1 and "does not exist" in proc.stderr
    store = CollectionStore(data, backends=FaissBackends(use_gpu=False))
    assert "fresh" not in {c.name for c in store.list_collections()}
    store.close()


def test_build_against_a_running_server(server: AppServer) -> None:
    root = server.data_dir / "import"
    root.mkdir(exist_ok=True)
    corpus = write_jsonl(root, "cli-remote")
    proc = xmodal(
        "index",
        "build",
        corpus.source,
        "--collection",
        "cli-remote",
        "--create",
        "--server",
        server.url,
        data_dir=server.data_dir,
    )
    assert proc.returncode == 0, proc.stderr
    assert_summary(proc.stdout, corpus)
    listing = xmodal("jobs", "--server", server.url, data_dir=server.data_dir)
    assert corpus.source in listing.stdout
    proc = xmodal(
        "index",
        "build",
        "nowhere.jsonl",
        "--collection",
        "cli-fresh",
        "--create",
        "--server",
        server.url,
        data_dir=server.data_dir,
    )
    assert proc.returncode == 1 and "does not exist" in proc.stderr
    assert httpx.get(f"{server.url}/v1/collections/cli-fresh").status_code == 404


def test_an_unreachable_server_is_one_line_naming_it(tmp_path: Path) -> None:
    for argv in (
        ("jobs", "--server", "http://127.0.0.1:9"),
        ("index", "build", "x.jsonl", "--collection", "c", "--server", "http://127.0.0.1:9"),
    ):
        proc = xmodal(*argv, data_dir=tmp_path)
        assert proc.returncode == 1, proc
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "http://127.0.0.1:9" in lines[0], proc.stderr
        assert "Traceback" not in proc.stderr


def test_an_in_process_build_refuses_the_data_dir_of_a_running_server(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_folder(data / "import", "pics", n=3)
    server = AppServer(data).start()
    try:
        proc = xmodal("index", "build", "pics", "--collection", "c", "--create", data_dir=data)
        assert proc.returncode == 1 and "in use" in proc.stderr and "--server" in proc.stderr
        assert httpx.get(f"{server.url}/v1/collections/c").status_code == 404
    finally:
        server.stop()
    proc = xmodal("index", "build", "pics", "--collection", "c", "--create", data_dir=data)
    assert proc.returncode == 0, proc.stderr  # the server gone, the dir is free again
