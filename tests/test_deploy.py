"""What can be checked of the deployment without a Docker engine: the compose file, the
Dockerfile's install and start commands, and that start command serving here."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
import yaml

from app.service.config import Settings
from tests.helpers import REPO, free_port

DOCKERFILE = (REPO / "docker" / "Dockerfile").read_text()


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return data


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_compose_has_the_gpu_reservation_volume_healthcheck_and_ports() -> None:
    spec = compose()
    services = spec["services"]
    gpu, cpu = services["xmodal"], services["xmodal-cpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert gpu["build"]["args"]["VARIANT"] == "gpu" and cpu["build"]["args"]["VARIANT"] == "cpu"
    assert "deploy" not in cpu and cpu["profiles"] == ["cpu"]
    for service in (gpu, cpu):
        assert service["restart"] == "unless-stopped"
        assert service["volumes"] == ["xmodal-data:/data"]
        assert service["environment"]["XMODAL_DATA_DIR"] == "/data"
        assert service["ports"][0].endswith(":8000")
        assert service["environment"]["XMODAL_PORT"] == "8000"
        check = service["healthcheck"]["test"]
        assert check[0] == "CMD" and check[-1] == "http://127.0.0.1:8000/readyz"
        # Long enough for the drain and the graceful timeout before Docker's SIGKILL.
        grace = int(service["stop_grace_period"].rstrip("s"))
        fields = Settings.model_fields
        assert grace > fields["graceful_timeout_s"].default + fields["shutdown_drain_s"].default
    assert "xmodal-data" in spec["volumes"]
    assert cpu["environment"]["XMODAL_DEVICE"] == "cpu"


def test_compose_settings_exist_and_their_defaults_are_the_services() -> None:
    env = compose()["services"]["xmodal"]["environment"]
    fields = Settings.model_fields
    checked = 0
    for variable, value in env.items():
        assert variable.startswith("XMODAL_"), variable
        name = variable.removeprefix("XMODAL_").lower()
        assert name in fields, f"{variable} is not a setting"
        m = re.fullmatch(r"\$\{(\w+):-(.*)\}", str(value))
        if m is None:
            continue  # fixed for the container: data dir, bind address, port
        assert m.group(1) == variable
        field = fields[name]  # the declared default, whatever this shell's XMODAL_* say
        default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
        shown = m.group(2)
        if isinstance(default, bool):
            assert shown == str(default).lower(), variable
        elif isinstance(default, list):
            assert shown == "" and default == [], variable
        else:
            assert shown == str(default), (variable, shown, default)
        checked += 1
    assert checked >= 15
    # The access settings a deployment needs are all there.
    for name in ("API_KEYS", "AUTH_READS", "CORS_ORIGINS", "MAX_CONCURRENT_REQUESTS"):
        assert f"XMODAL_{name}" in env


def resolved(env: dict[str, Any]) -> dict[str, str]:
    """Compose's ``${VAR:-default}`` values as they are with nothing exported."""
    return {k: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(v)) for k, v in env.items()}


def flag(command: str, name: str) -> str:
    m = re.search(rf"(?:^| )--?{name}[= ](\S+)", command)
    assert m is not None, (name, command)
    return m.group(1)


def test_the_scale_profile_wires_xmodal_to_milvus_and_ray() -> None:
    spec = compose()
    services = spec["services"]
    scale = {n for n, s in services.items() if "scale" in s.get("profiles", [])}
    assert scale == {"xmodal-scale", "ray-head", "ray-gpu-worker", "milvus", "milvus-etcd"} | {
        "milvus-minio",
        "postgres",
    }
    api, head, worker = services["xmodal-scale"], services["ray-head"], services["ray-gpu-worker"]
    env = resolved(api["environment"])
    settings = Settings(
        **{k.removeprefix("XMODAL_").lower(): v for k, v in env.items() if v != ""}  # type: ignore[arg-type]
    )
    assert settings.vector_backend == "milvus"
    # xmodal -> Milvus: the service name and the port Milvus serves its API on.
    milvus_uri = urlparse(settings.milvus_target[0])
    assert milvus_uri.scheme == "http" and (milvus_uri.hostname, milvus_uri.port) == (
        "milvus",
        19530,
    )
    # xmodal -> PostgreSQL: the service, its port, and the user, password and database it
    # creates.
    assert settings.database_url is not None
    db = urlparse(settings.database_url.get_secret_value())
    penv = resolved(services["postgres"]["environment"])
    assert (db.scheme, db.hostname, db.port) == ("postgresql", "postgres", 5432)
    assert (db.username, db.password, db.path) == (
        penv["POSTGRES_USER"],
        penv["POSTGRES_PASSWORD"],
        "/" + penv["POSTGRES_DB"],
    )
    assert api["depends_on"]["postgres"] == {"condition": "service_healthy"}
    # Milvus -> etcd and MinIO: their service names, the ports they listen on, one key pair.
    milvus = services["milvus"]
    menv = resolved(milvus["environment"])
    etcd = services["milvus-etcd"]
    assert (
        menv["ETCD_ENDPOINTS"]
        == "milvus-etcd:"
        + urlparse(flag(etcd["command"], "listen-client-urls")).netloc.split(":")[1]
    )
    assert menv["MINIO_ADDRESS"] == "milvus-minio:9000"  # MinIO's API port
    minio = resolved(services["milvus-minio"]["environment"])
    assert (menv["MINIO_ACCESS_KEY_ID"], menv["MINIO_SECRET_ACCESS_KEY"]) == (
        minio["MINIO_ACCESS_KEY"],
        minio["MINIO_SECRET_KEY"],
    )
    # xmodal -> the Ray head's client server; the worker -> the head's GCS port.
    ray_address = urlparse(str(settings.ray_address))
    assert ray_address.scheme == "ray" and ray_address.hostname == "ray-head"
    assert str(ray_address.port) == flag(head["command"], "ray-client-server-port")
    assert flag(worker["command"], "address") == "ray-head:" + flag(head["command"], "port")
    assert flag(worker["command"], "num-gpus") == "1" and flag(head["command"], "num-gpus") == "0"
    gpu = worker["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["count"] == 1
    # One image for the three, with the extra that brings Ray and pymilvus.
    for service in (api, head, worker):
        assert service["image"] == "xmodal:gpu-scale"
        assert service["build"]["args"]["SCALE"] == "1"
        assert "xmodal-scale-data:/data" in service["volumes"]  # sources and image files
    pyproject = (REPO / "pyproject.toml").read_text()
    extra = re.search(r"^scale = \[(.*)\]$", pyproject, re.M)
    assert extra is not None and "ray[data]" in extra.group(1) and "pymilvus" in extra.group(1)
    # Start order: whatever waits for a service's health has a health check to wait for.
    for name, service in services.items():
        for needed, how in (service.get("depends_on") or {}).items():
            assert needed in services, (name, needed)
            if how["condition"] == "service_healthy":
                check = services[needed].get("healthcheck", {})
                assert check and not check.get("disable"), (name, needed)
    assert set(api["depends_on"]) == {"postgres", "milvus", "ray-head", "ray-gpu-worker"}
    # Not the default server's data dir: two servers cannot hold one.
    assert "xmodal-data:/data" not in api["volumes"]
    assert {"xmodal-scale-data", "milvus-data"} <= set(spec["volumes"])


def test_dockerfile_installs_with_the_documented_command() -> None:
    docs = REPO / "docs"
    readme = (docs / "deployment-and-security.md").read_text() + (docs / "indexing.md").read_text()
    runs = [args for word, args in dockerfile_instructions() if word == "RUN"]
    installs = [cmd for args in runs for cmd in args.split("&&") if "pip install" in cmd]
    assert [c.strip() for c in installs] == [
        'pip install ".${EXTRAS}"',
        'if [ "$SCALE" = "1" ]; then pip install ".[scale]"; fi',
    ]
    assert "`pip install '.[scale]'`" in readme
    extras = dict(re.findall(r'AS base-(\w+)\n(?:.*\n)*?ENV .*EXTRAS="([^"]*)"', DOCKERFILE))
    assert extras == {"cpu": "", "gpu": "[gpu]"}
    for variant, extra in extras.items():
        command = f"pip install {shlex.quote('.' + extra)}"
        assert f"`{command}`" in readme, (variant, command)
    # Everything the package needs is copied in before the install.
    pyproject = (REPO / "pyproject.toml").read_text()
    packages = re.findall(r'"(\w+)\*"', pyproject.split("[tool.setuptools.packages.find]")[1])
    copied = {args.split()[0] for word, args in dockerfile_instructions() if word == "COPY"}
    assert set(packages) <= copied and {"pyproject.toml"} <= copied


def test_dockerfile_runs_unprivileged_with_a_volume_a_port_and_a_healthcheck() -> None:
    steps = dockerfile_instructions()
    final = [w for w, a in steps].index("FROM", 2)  # the stage after the two bases
    after = steps[final:]
    users = [a for w, a in after if w == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert ("VOLUME", '["/data"]') in after and ("EXPOSE", "8000") in after
    health = next(a for w, a in after if w == "HEALTHCHECK")
    assert "/readyz" in health
    assert "ARG BAKE_WEIGHTS=0" in DOCKERFILE


def test_the_container_start_command_serves_here(tmp_path: Path) -> None:
    """The image's CMD and its ENV, run outside a container: it serves, and the image's
    healthcheck command finds it ready."""
    steps = dockerfile_instructions()
    env: dict[str, str] = {}
    for word, args in steps:
        if word == "ENV":
            for name, value in re.findall(r'(\w+)=("[^"]*"|\S+)', args):
                env[name] = value.strip('"')
    cmd = json.loads(next(a for w, a in reversed(steps) if w == "CMD"))
    port = free_port()
    venv_bin = str(Path(sys.executable).parent)
    run_env = {
        **os.environ,
        **{k: v for k, v in env.items() if k.startswith("XMODAL_") or k.startswith("PYTHON")},
        # Outside the container: this checkout's environment, a private data dir and port,
        # and the tiny model, since no weights can be downloaded here.
        "PATH": f"{venv_bin}:{os.environ['PATH']}",
        "XMODAL_DATA_DIR": str(tmp_path / "data"),
        "XMODAL_PORT": str(port),
        "XMODAL_MODEL": "xmodal-tiny",
        "XMODAL_PRETRAINED": "none",
        "XMODAL_DEVICE": "cpu",
        "HF_ENDPOINT": "https://127.0.0.1:9",
    }
    assert env["XMODAL_HOST"] == "0.0.0.0" and env["XMODAL_DATA_DIR"] == "/data"
    health = next(a for w, a in steps if w == "HEALTHCHECK").split(" CMD ", 1)[1]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=run_env)
    try:
        deadline = time.monotonic() + 120
        ready = False
        while time.monotonic() < deadline and not ready:
            assert proc.poll() is None, "the start command exited"
            check = subprocess.run(["sh", "-c", health], env=run_env, capture_output=True)
            ready = check.returncode == 0
            time.sleep(0.3)
        assert ready, "the healthcheck never passed"
        r = httpx.post(f"http://127.0.0.1:{port}/v1/collections", json={"name": "box"})
        assert r.status_code == 201
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_each_variant_sets_a_torch_index_and_extras(variant: str) -> None:
    stage = DOCKERFILE.split(f"AS base-{variant}")[1].split("FROM ")[0]
    index = re.search(r"PIP_EXTRA_INDEX_URL=(\S+)", stage)
    assert index is not None
    assert index.group(1).endswith("/cpu" if variant == "cpu" else "/cu124")


def test_the_ha_profile_puts_two_servers_behind_nginx_over_shared_state() -> None:
    """Two API servers with a data volume each and one shared volume, one catalogue and
    one Milvus, behind nginx configured as the failover tests run it."""
    from bench.nginx import COMPOSE_UPSTREAMS, config

    services = compose()["services"]
    ha = {n for n, s in services.items() if "ha" in s.get("profiles", [])}
    assert ha == {"xmodal-api-1", "xmodal-api-2", "nginx", "postgres", "milvus"} | {
        "milvus-etcd",
        "milvus-minio",
    }
    apis = [services[n] for n in ("xmodal-api-1", "xmodal-api-2")]
    settings = []
    for api in apis:
        env = resolved(api["environment"])
        settings.append(
            Settings(**{k.removeprefix("XMODAL_").lower(): v for k, v in env.items() if v != ""})  # type: ignore[arg-type]
        )
        assert api["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "milvus": {"condition": "service_healthy"},
        }
        assert "xmodal-shared:/shared" in api["volumes"]
    a, b = settings
    assert a.shared_dir == b.shared_dir == Path("/shared")
    assert a.database_url is not None and b.database_url is not None
    assert a.database_url.get_secret_value() == b.database_url.get_secret_value()
    assert a.vector_backend == b.vector_backend == "milvus"
    assert a.milvus_target == b.milvus_target and a.milvus_target[0].startswith("http://")
    assert a.shutdown_drain_s > 0  # nginx moves on before the listener closes
    data = [next(v for v in api["volumes"] if v.endswith(":/data")) for api in apis]
    assert len(set(data)) == 2  # a data dir each: two servers cannot hold one
    # nginx: the file it mounts is the one bench.nginx writes, naming both servers.
    nginx = services["nginx"]
    mount = next(v for v in nginx["volumes"] if v.endswith(":/etc/nginx/nginx.conf:ro"))
    conf = (REPO / mount.split(":")[0]).read_text()
    assert conf == config(COMPOSE_UPSTREAMS, "80"), "regenerate: python -m bench.nginx"
    assert [u.split(":")[0] for u in COMPOSE_UPSTREAMS] == ["xmodal-api-1", "xmodal-api-2"]
    assert set(nginx["depends_on"]) == {"xmodal-api-1", "xmodal-api-2"}
