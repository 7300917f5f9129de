"""The ``xmodal`` command."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

if TYPE_CHECKING:
    from app.config import Settings


class CliError(Exception):
    """Reported as ``xmodal: message`` with exit status ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _settings() -> Settings:
    from app.config import Settings

    try:
        return Settings()
    except ValidationError as exc:
        raise CliError(f"invalid settings:\n{exc}", 2) from exc


def _serve(args: argparse.Namespace) -> int:
    from models.errors import ModelLoadError
    from models.loading import resolve_weights

    settings = _settings()
    host = args.host or settings.host
    port = args.port or settings.port
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Check the weights before binding the port: a machine without network and without the
    # weights fails here in seconds, with the way out in the message. Downloading and
    # loading happen once the port is open, while /readyz answers 503.
    try:
        resolve_weights(
            settings.model,
            settings.pretrained,
            settings.model_cache_dir,
            seed=settings.seed,
            check_only=True,
        )
    except ModelLoadError as exc:
        print(f"xmodal: cannot load the model: {exc}", file=sys.stderr)
        return 3
    import uvicorn

    from app.main import create_app

    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=30,
    )
    return 0


# --- batch indexing -------------------------------------------------------------------------
def _index_build(args: argparse.Namespace) -> int:
    if args.server:
        return _index_build_remote(args)
    return _index_build_local(args)


def _index_build_remote(args: argparse.Namespace) -> int:
    import httpx

    with httpx.Client(base_url=args.server.rstrip("/"), timeout=60, headers=_auth(args)) as client:
        if args.create:
            r = client.post("/v1/collections", json={"name": args.collection, "index": args.index})
            if r.status_code not in (201, 409):
                raise CliError(_api_message(r))
        r = client.post(
            f"/v1/collections/{args.collection}/jobs/index",
            json={"source": args.source, "format": args.format},
        )
        if r.status_code != 202:
            raise CliError(_api_message(r))
        job_id = r.json()["id"]
        print(f"job {job_id} started on {args.server}", file=sys.stderr)
        while True:
            r = client.get(f"/v1/jobs/{job_id}")
            if r.status_code != 200:
                raise CliError(_api_message(r))
            job = r.json()
            _show_progress(job)
            if job["state"] in ("succeeded", "failed", "cancelled"):
                return _report(job)
            time.sleep(0.5)


def _index_build_local(args: argparse.Namespace) -> int:
    from app.jobs import JobManager, job_summary
    from index import CollectionExists, CollectionStore, JobStore
    from models import load_encoder

    settings = _settings()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    store = CollectionStore(
        settings.data_dir,
        store_images=settings.store_images,
        use_gpu=settings.faiss_gpu,
        snapshot_every=settings.snapshot_every,
        nprobe=settings.nprobe,
    )
    manager = None
    try:
        encoder = load_encoder(
            settings.model,
            settings.pretrained,
            settings.device,
            settings.model_cache_dir,
            settings.seed,
        )
        if args.create:
            with contextlib.suppress(CollectionExists):
                store.create_collection(args.collection, encoder.dim, encoder.version, args.index)
        manager = JobManager(settings, store, JobStore(store), encoder, lambda fn, *a: fn(*a))
        job = manager.submit_index(args.collection, args.source, args.format)
        print(f"job {job.id} running in this process", file=sys.stderr)
        try:
            finished = manager.run(job, on_progress=lambda j: _show_progress(job_summary(j)))
        except KeyboardInterrupt:
            # Nobody would resume an in-process job: end it, keeping what it stored.
            finished = manager.jobs.cancel(job.id)
        return _report(job_summary(finished))
    finally:
        if manager is not None:
            manager.stop()
        store.close()


def _jobs(args: argparse.Namespace) -> int:
    if args.server:
        import httpx

        r = httpx.get(args.server.rstrip("/") + "/v1/jobs", timeout=30, headers=_auth(args))
        if r.status_code != 200:
            raise CliError(_api_message(r))
        jobs = r.json()["jobs"]
    else:
        from app.jobs import job_summary
        from index import CollectionStore, JobStore

        settings = _settings()
        store = CollectionStore(settings.data_dir, use_gpu=False)
        try:
            jobs = [job_summary(j) for j in JobStore(store).recent()]
        finally:
            store.close()
    row = "{:16}  {:8}  {:9}  {:16}  {:>8}  {:>7}  {:>8}  {}"
    print(row.format("id", "kind", "state", "collection", "done", "failed", "total", "source"))
    for j in jobs:
        total = "" if j["total"] is None else j["total"]
        print(
            row.format(
                j["id"],
                j["kind"],
                j["state"],
                j["collection"] or "",
                j["done"],
                j["failed"],
                total,
                j["params"].get("source", ""),
            )
        )
    return 0


def _show_progress(job: dict[str, Any]) -> None:
    total, done, failed = job.get("total"), job["done"], job["failed"]
    processed = done + failed
    rate = job.get("items_per_second")
    eta = job.get("eta_seconds")
    if total:
        filled = int(30 * processed / total)
        bar = f"[{'#' * filled}{'.' * (30 - filled)}] {processed}/{total}"
        bar += f" {100 * processed / total:5.1f}%"
    else:
        bar = f"{processed} items"
    extra = f"  {rate:,.0f} items/s" if rate else ""
    extra += f"  ETA {eta:,.0f} s" if eta else ""
    extra += f"  {failed} failed" if failed else ""
    sys.stderr.write(f"\r{bar}{extra}   ")
    sys.stderr.flush()


def _report(job: dict[str, Any]) -> int:
    sys.stderr.write("\n")
    print(
        f"job {job['id']} {job['state']}: {job['done']} done, {job['failed']} failed"
        + (f" ({job['message']})" if job.get("message") else "")
    )
    for err in job["errors"][:20]:
        print(f"  failed {err['item']}: {err['reason']}")
    if len(job["errors"]) > 20 or job["failed"] > len(job["errors"]):
        print(f"  ... {job['failed'] - min(20, len(job['errors']))} more failures")
    return 0 if job["state"] == "succeeded" else 1


def _auth(args: argparse.Namespace) -> dict[str, str]:
    key = getattr(args, "api_key", None)
    return {"Authorization": f"Bearer {key}"} if key else {}


def _api_message(r: Any) -> str:
    try:
        err = r.json()["error"]
        return f"{r.status_code} {err['code']}: {err['message']}"
    except (ValueError, KeyError, TypeError):
        return f"{r.status_code}: {r.text[:200]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xmodal", description="Cross-modal retrieval service.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="Run the HTTP server (settings from XMODAL_* variables).")
    serve.add_argument("--host", help="bind address (default: XMODAL_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: XMODAL_PORT or 8000)")
    serve.set_defaults(func=_serve)

    index = sub.add_parser("index", help="Build indexes from corpora on disk.")
    index_sub = index.add_subparsers(dest="index_command", required=True)
    build = index_sub.add_parser(
        "build", help="Index SOURCE (relative to the import root) into a collection as a job."
    )
    build.add_argument(
        "source", help="manifest (.jsonl/.csv/.parquet), image folder or .tar shards"
    )
    build.add_argument("--collection", required=True)
    build.add_argument("--format", choices=["jsonl", "csv", "parquet", "folder", "webdataset"])
    build.add_argument("--server", help="URL of a running server (default: run in this process)")
    build.add_argument("--create", action="store_true", help="create the collection if missing")
    build.add_argument("--index", help="FAISS spec for a collection --create makes")
    build.add_argument(
        "--api-key", default=os.environ.get("XMODAL_API_KEY"), help=argparse.SUPPRESS
    )
    build.set_defaults(func=_index_build)

    jobs = sub.add_parser("jobs", help="List jobs (of a server, or of the local data dir).")
    jobs.add_argument("--server", help="URL of a running server")
    jobs.add_argument("--api-key", default=os.environ.get("XMODAL_API_KEY"), help=argparse.SUPPRESS)
    jobs.set_defaults(func=_jobs)

    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except CliError as exc:
        print(f"xmodal: {exc}", file=sys.stderr)
        return exc.code
    except Exception as exc:  # a domain error from the local store or sources
        from index import StoreError
        from models.errors import ModelError
        from models.sources import SourceError

        if isinstance(exc, (StoreError, ModelError, SourceError)):
            print(f"xmodal: {exc}", file=sys.stderr)
            return 1
        raise
    return code


if __name__ == "__main__":
    sys.exit(main())
