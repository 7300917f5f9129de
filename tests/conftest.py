from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest

from app.service.jobs.ray_engine import LOOPBACK_ENV
from bench.postgres import PgCluster
from models.encoder import ClipEncoder, load_encoder
from tests.helpers import BACKENDS, AppServer

CATALOGUES = ["sqlite", "postgres"]

# No test may reach the internet: point the model hub at a closed loopback port.
os.environ["HF_ENDPOINT"] = "https://127.0.0.1:9"
# A local Ray cluster started by a test listens on loopback only (before ray is imported).
os.environ.update(LOOPBACK_ENV)


def pytest_configure(config: pytest.Config) -> None:
    """Under xdist, each worker (and every server or CLI process it starts) gets its share
    of the cores for torch and FAISS: two workers with two threads each on two cores lose
    more to descheduled threads than they gain (the fine-tuning fixture of
    tests/models/test_finetune.py took 83 s so)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        share = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(share)
        torch.set_num_threads(share)


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> ClipEncoder:

    return load_encoder("xmodal-tiny", "none", "cpu", tmp_path_factory.mktemp("models"))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """API tests run on FAISS; a test marked ``both_backends`` (its answers depend on the
    vector backend) runs on Milvus Lite too. Store scenarios compared across backends are
    in tests/parity/."""
    named = [str(m.args[0]) for m in metafunc.definition.iter_markers("parametrize")]
    if "backend" in metafunc.fixturenames and not any("backend" in n for n in named):
        both = metafunc.definition.get_closest_marker("both_backends") is not None
        metafunc.parametrize("backend", BACKENDS if both else ["faiss"], scope="session")
    if "catalogue" in metafunc.fixturenames and not any("catalogue" in n for n in named):
        both = metafunc.definition.get_closest_marker("both_catalogues") is not None
        metafunc.parametrize("catalogue", CATALOGUES if both else ["sqlite"], scope="session")


@pytest.fixture(scope="session")
def pg() -> Iterator[PgCluster]:
    """A throwaway PostgreSQL cluster for this test process (``tests.pg``): each test that
    needs a catalogue on it takes a fresh database (``pg.database()``)."""
    cluster = PgCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def server(
    tmp_path_factory: pytest.TempPathFactory,
    backend: str,
    catalogue: str,
    request: pytest.FixtureRequest,
) -> Iterator[AppServer]:
    """One in-process server per vector backend and catalogue for the API tests, with
    small limits so the limit tests stay cheap. A module marked ``both_catalogues`` runs
    against a server whose catalogue is on PostgreSQL too."""
    extra = {}
    if catalogue == "postgres":
        extra["database_url"] = request.getfixturevalue("pg").database()
    proc = AppServer(
        tmp_path_factory.mktemp(f"server-{backend}-{catalogue}") / "data",
        vector_backend=backend,
        **extra,
        max_upload_bytes=200_000,
        max_request_bytes=1_000_000,
        max_files_per_request=8,
        max_texts_per_request=16,
        max_text_chars=2000,
        max_image_pixels=4_000_000,
        max_k=500,
    ).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def client(server: AppServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30.0) as c:
        yield c


@pytest.fixture
def collection(client: httpx.Client, request: pytest.FixtureRequest) -> str:
    name = request.node.name.replace("[", "-").replace("]", "")[:60]
    client.delete(f"/v1/collections/{name}")
    r = client.post("/v1/collections", json={"name": name})
    assert r.status_code == 201, r.text
    return name


# The files that take longest (a minute or more of one worker each, measured on the 2-core
# machine), handed out first: with --dist loadfile a worker takes the next file when it is
# free, so the longest going first leaves no long file for the end, while the other
# worker sits idle (longest processing time first).
LONGEST_FIRST = (
    "tests/cluster/slow/test_failover.py",
    "tests/api/slow/test_crash_trials.py",
    "tests/models/slow/test_distill.py",
    "tests/parity/slow/test_durability.py",
    "tests/models/slow/test_finetune.py",
    "tests/parity/slow/test_ray_ingest.py",
    "tests/slow/test_first_hour.py",
    "tests/api/slow/test_fuzz.py",
    "tests/api/slow/test_operations.py",
    "tests/ui/test_web.py",
)
# The slow tier, by folder: a ``slow`` folder on any floor, and the browser's. ``make
# test-quick`` leaves it out for a quick local loop; ``make test`` runs everything.
SLOW_PARTS = ("slow", "ui")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    from index import gpu_count

    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}

    def order(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return rank.get(path, len(rank))

    items.sort(key=order)  # stable: within a file, and among the others, as collected
    for item in items:
        if SLOW_PARTS and set(item.path.relative_to(config.rootpath).parts) & set(SLOW_PARTS):
            item.add_marker(pytest.mark.slow)
    if torch.cuda.is_available() or gpu_count() > 0:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # the mark, not a test id
            item.add_marker(skip_gpu)
