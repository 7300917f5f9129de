"""The ``xmodal`` command: serve, index build, jobs, finetune, eval, models, demo.

Commands with ``--server`` talk to a running server (``app.cli.client``); without it they
build the stack in this process and run their job in the calling thread.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from app.cli import search as search_command
from app.cli import snapshot as snapshot_command
from app.cli.client import ApiClient, CliError
from app.cli.parser import build_parser
from app.cli.render import (
    finetune_summary,
    jobs_table,
    metrics_table,
    models_table,
    report,
    show_progress,
    show_training,
    torch_mismatch,
)

if TYPE_CHECKING:
    from app.service.config import Settings
    from app.service.stack import Stack
    from index import Job


def _client(args: argparse.Namespace, timeout: float | None = 60) -> ApiClient:
    return ApiClient(args.server, getattr(args, "api_key", None), timeout)


def _settings() -> Settings:
    from app.service.config import Settings

    try:
        return Settings()
    except ValidationError as exc:
        raise CliError(f"invalid settings:\n{exc}", 2) from exc


def _serve(args: argparse.Namespace) -> int:
    from app.service.logs import configure
    from models.errors import ModelLoadError
    from models.loading import resolve_weights

    settings = _settings()
    host = args.host or settings.host
    port = args.port or settings.port
    configure(settings.log_level, settings.log_format)
    log = logging.getLogger("xmodal.serve")
    # Check the weights before binding the port: a machine without network and without the
    # weights fails here in seconds, with the way out in the message. Downloading and
    # loading happen once the port is open, while /readyz answers 503.
    try:
        resolve_weights(
            settings.model,
            settings.pretrained,
            settings.model_cache_dir,
            check_only=True,
        )
    except ModelLoadError as exc:
        print(f"xmodal: cannot load the model: {exc}", file=sys.stderr)
        return 3
    keyless = not settings.api_keys and settings.api_keys_file is None
    if keyless and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "listening on %s without XMODAL_API_KEYS: anyone who reaches it can write", host
        )
    import uvicorn

    from app.api.main import create_app
    from app.api.server import DrainingServer

    app = create_app(settings)
    # SIGHUP reads the API keys file again (keys are never logged, only their count).
    signal.signal(signal.SIGHUP, lambda signum, frame: app.state.keys.reload())
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,  # our handler, configured above, formats uvicorn's records too
        access_log=False,  # RequestContext writes the access log, with the request id
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.graceful_timeout_s),
    )
    DrainingServer(config, app.state.services, settings.shutdown_drain_s).run()
    return 0


# --- batch indexing -------------------------------------------------------------------------
def _index_build(args: argparse.Namespace) -> int:
    if args.server:
        return _index_build_remote(args)
    return _index_build_local(args)


def _index_build_remote(args: argparse.Namespace) -> int:
    with _client(args) as client:
        created = False
        if args.create:
            collection = {"name": args.collection, "index": args.index}
            created = "name" in client.post("/v1/collections", collection, (201, 409))
        body = {"source": args.source, "format": args.format}
        if args.ray is not None:
            body["engine"] = "ray"
        path = f"/v1/collections/{args.collection}/jobs/index"
        try:
            job_id = client.post(path, body, (202,))["id"]
        except CliError:
            if created:  # a bad source leaves no empty collection behind
                client.delete(f"/v1/collections/{args.collection}")
            raise
        print(f"job {job_id} started on {client.url}", file=sys.stderr)
        return report(client.wait_job(job_id, show_progress))


@contextlib.contextmanager
def _local_stack() -> Iterator[Stack]:
    """The store, the model and the jobs in this process, for commands run without
    ``--server``; the jobs run in the calling thread."""
    from app.service.stack import build_stack

    settings = _settings()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    stack = build_stack(settings)
    try:
        yield stack
    finally:
        stack.close()


def _run_local(stack: Stack, job: Job, show: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    from app.service.jobs import job_summary

    print(f"job {job.id} running in this process", file=sys.stderr)
    try:
        finished = stack.jobs.run(job, on_progress=lambda j: show(job_summary(j)))
    except KeyboardInterrupt:
        # Nobody would resume an in-process job: end it, keeping what it stored.
        finished = stack.jobs.jobs.cancel(job.id)
    return job_summary(finished)


def _index_build_local(args: argparse.Namespace) -> int:
    from app.service.jobs import INDEX_JOB
    from index import CollectionExists
    from models.sources import SourceError, open_source

    settings = _settings()
    try:  # before creating anything; the operator's own machine: name the root
        open_source(settings.import_root_dir, args.source, args.format)
    except SourceError as exc:
        raise CliError(f"{exc} ({settings.import_root_dir.resolve()})") from exc
    with _local_stack() as stack:
        if args.create:
            with contextlib.suppress(CollectionExists):
                stack.store.create_collection(
                    args.collection, stack.engine.dim, stack.engine.space, args.index
                )
        params = {"source": args.source, "format": args.format}
        if args.ray is not None:
            params.update(engine="ray", ray_address=args.ray or None)
        job = stack.jobs.submit(INDEX_JOB, args.collection, params)
        return report(_run_local(stack, job, show_progress))


# --- near-duplicates --------------------------------------------------------------------------
def _duplicates(args: argparse.Namespace) -> int:
    """Run a duplicates job; print each group on a line (ids tab-separated), and write the
    whole result as JSON to ``--out`` if given."""
    params = {"threshold": args.threshold, "modality": args.modality}
    if args.server:
        with _client(args) as client:
            path = f"/v1/collections/{args.collection}/jobs/duplicates"
            job = client.run_job(path, params, show_progress)
            result = client.get(f"/v1/jobs/{job['id']}/result") if _ok(job) else None
    else:
        from app.service.jobs import DUPLICATES_JOB, DuplicatesRunner

        with _local_stack() as stack:
            job = _run_local(
                stack, stack.jobs.submit(DUPLICATES_JOB, args.collection, params), show_progress
            )
            runner = stack.jobs.runners[DUPLICATES_JOB]
            assert isinstance(runner, DuplicatesRunner)
            result = json.loads(runner.result_path(job["id"]).read_text()) if _ok(job) else None
    sys.stderr.write("\n")
    if result is None:
        print(
            f"job {job['id']} {job['state']}: {job.get('message') or ''}".rstrip(), file=sys.stderr
        )
        return 1
    groups = result["groups"]
    items = sum(len(g["ids"]) for g in groups)
    print(
        f"{len(groups)} groups of near-duplicates ({items} {args.modality}s) at cosine >= "
        f"{args.threshold} among {job['done']}",
        file=sys.stderr,
    )
    for group in groups:
        print("\t".join(group["ids"]))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


# --- indexes ----------------------------------------------------------------------------------
REPORT_COLUMNS = ("recall_at_1", "recall_at_10", "raw_recall_at_10", "p50_ms", "bytes_per_vector")


def _report_table(rows: list[dict[str, Any]], first: str) -> str:
    lines = ["\t".join((first, *REPORT_COLUMNS))]
    for row in rows:
        cells = [
            f"{row[c]:.3f}" if c != "bytes_per_vector" else f"{row[c]:.0f}" for c in REPORT_COLUMNS
        ]
        lines.append("\t".join((str(row.get(first, row.get("spec"))), *cells)))
    return "\n".join(lines)


def _reindex(args: argparse.Namespace) -> int:
    """Move a collection to another index spec; print what the new index measured."""
    params = {"index": args.index}
    if args.server:
        with _client(args) as client:
            path = f"/v1/collections/{args.collection}/jobs/reindex"
            job = client.run_job(path, params, show_progress)
    else:
        from app.service.jobs import REINDEX_JOB

        with _local_stack() as stack:
            job = _run_local(
                stack, stack.jobs.submit(REINDEX_JOB, args.collection, params), show_progress
            )
    sys.stderr.write("\n")
    if not _ok(job):
        print(
            f"job {job['id']} {job['state']}: {job.get('message') or ''}".rstrip(), file=sys.stderr
        )
        return 1
    report = job["detail"]["report"]
    rows = [{"modality": m, **r} for m, r in report.items() if r["vectors"]]
    print(f"{args.collection} now uses {job['params']['index']}", file=sys.stderr)
    print(_report_table(rows, "modality"))
    return 0


def _index_advice(args: argparse.Namespace) -> int:
    """Measure a ladder of index specs on a sample of a collection; print the table and the
    smallest that meets the targets."""
    if not 100 <= args.sample <= 20_000:
        raise CliError("--sample is 100 to 20000 vectors", 2)
    targets = {
        k: v
        for k, v in (
            ("recall_at_1", args.recall_at_1),
            ("recall_at_10", args.recall_at_10),
            ("p50_ms", args.p50_ms),
        )
        if v is not None
    }
    if args.server:
        body = {"targets": targets, "sample": args.sample, "modality": args.modality}
        with _client(args, timeout=None) as client:
            answer = client.post(f"/v1/collections/{args.collection}/index-advice", body)
    else:
        from index import Modality

        with _local_stack() as stack:
            modality = Modality(args.modality) if args.modality else None
            answer = stack.advisor.advise(args.collection, targets, modality, args.sample)
    print(_report_table(answer["rows"], "spec"))
    wanted = ", ".join(f"{k} {v}" for k, v in targets.items())
    choice = answer["choice"] or "none of them"
    print(
        f"smallest meeting {wanted} on {answer['sample']} {answer['modality']}s: {choice}",
        file=sys.stderr,
    )
    return 0 if answer["choice"] else 1


def _ok(job: dict[str, Any]) -> bool:
    return bool(job["state"] == "succeeded")


# --- fine-tuning ------------------------------------------------------------------------------
def _finetune(args: argparse.Namespace) -> int:
    hyperparameters: dict[str, Any] = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise CliError(f"--set takes KEY=VALUE, got {item!r}", 2)
        try:
            hyperparameters[key] = json.loads(value)
        except json.JSONDecodeError:
            hyperparameters[key] = value
    params = {
        "source": args.source,
        "method": args.method,
        "eval_source": args.eval_source,
        "eval_fraction": args.eval_fraction,
        "target_source": args.target_source,
        "seed": args.seed,
        "hyperparameters": hyperparameters,
    }
    if args.server:
        with _client(args) as client:
            job = client.run_job("/v1/finetune", params, show_training)
    else:
        from app.service.finetune import FINETUNE_JOB

        with _local_stack() as stack:
            job = _run_local(stack, stack.jobs.submit(FINETUNE_JOB, None, params), show_training)
    sys.stderr.write("\n")
    print(finetune_summary(job))
    return 0 if job["state"] == "succeeded" else 1


def _eval(args: argparse.Namespace) -> int:
    if args.server:
        with _client(args, timeout=None) as client:
            result = client.post("/v1/evaluate", {"source": args.source, "model": args.model})
    else:
        with _local_stack() as stack:
            engine = stack.engine
            result = stack.finetuner.evaluate_source(
                args.source, args.model or engine.version, engine.encoders
            )
    print(f"model {result['model']} on {args.source} ({int(result['metrics']['pairs'])} pairs)")
    print(metrics_table({"value": result["metrics"]}))
    return 0


def _models(args: argparse.Namespace) -> int:
    if args.server:
        with _client(args) as client:
            models = client.get("/v1/models")["models"]
    else:
        from models.loading import resolve_weights
        from models.registry import ModelRegistry

        settings = _settings()
        active = resolve_weights(
            settings.model,
            settings.pretrained,
            settings.model_cache_dir,
            check_only=True,
        ).version
        models = [
            {"version": active, "base": None, "method": "pretrained", "metrics": {}, "active": True}
        ]
        for v in ModelRegistry(settings.data_dir / "versions").versions():
            models.append(
                {
                    "version": v.version,
                    "base": v.base,
                    "method": v.method,
                    "metrics": v.metrics,
                    "active": False,
                }
            )
    print(models_table(models))
    return 0


def _jobs(args: argparse.Namespace) -> int:
    if args.server:
        with _client(args) as client:
            jobs = client.get("/v1/jobs")["jobs"]
    else:
        from app.service.jobs import job_summary
        from app.service.stack import open_job_store

        job_store = open_job_store(_settings())
        try:
            jobs = [job_summary(j) for j in job_store.recent()]
        finally:
            job_store.db.close()
    print(jobs_table(jobs))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from app.cli.demo import run

    return run(Path(args.data_dir), args.port, args.pairs, args.epochs)


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "serve": _serve,
    "index build": _index_build,
    "jobs": _jobs,
    "finetune": _finetune,
    "eval": _eval,
    "models": _models,
    "demo": _demo,
    "duplicates": _duplicates,
    "reindex": _reindex,
    "index-advice": _index_advice,
    "search": search_command.run,
    "snapshot": snapshot_command.run,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = HANDLERS[args.handler](args)
    except KeyboardInterrupt:
        # Stopping a server or the demo is their normal end; any other command was cut short.
        if args.command in ("serve", "demo"):
            return 0
        print("xmodal: interrupted", file=sys.stderr)
        return 130
    except CliError as exc:
        print(f"xmodal: {exc}", file=sys.stderr)
        return exc.code
    except Exception as exc:  # a domain error from the local store, sources or model
        from app.service.errors import ServiceError
        from index import StoreError
        from models.errors import ModelError

        if isinstance(exc, (StoreError, ModelError, ServiceError)):
            print(f"xmodal: {exc}", file=sys.stderr)
            return 1
        if (mismatch := torch_mismatch(exc)) is not None:
            print(f"xmodal: {mismatch}", file=sys.stderr)
            return 1
        raise
    return code
