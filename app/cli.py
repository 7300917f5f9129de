"""The ``xmodal`` command."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

if TYPE_CHECKING:
    from app.config import Settings
    from app.stack import Stack
    from index import Job


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
    from app.logs import configure
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
            seed=settings.seed,
            check_only=True,
        )
    except ModelLoadError as exc:
        print(f"xmodal: cannot load the model: {exc}", file=sys.stderr)
        return 3
    if not settings.api_keys and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "listening on %s without XMODAL_API_KEYS: anyone who reaches it can write", host
        )
    import uvicorn

    from app.main import create_app
    from app.server import DrainingServer

    app = create_app(settings)
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
    import httpx

    if args.create:
        r = httpx.post(
            args.server.rstrip("/") + "/v1/collections",
            json={"name": args.collection, "index": args.index},
            timeout=60,
            headers=_auth(args),
        )
        if r.status_code not in (201, 409):
            raise CliError(_api_message(r))
    body = {"source": args.source, "format": args.format}
    return _report(
        _remote_job(args, f"/v1/collections/{args.collection}/jobs/index", body, _show_progress)
    )


@contextlib.contextmanager
def _local_stack() -> Iterator[Stack]:
    """The store, the model and the jobs in this process, for commands run without
    ``--server``; the jobs run in the calling thread."""
    from app.stack import build_stack

    settings = _settings()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    stack = build_stack(settings)
    try:
        yield stack
    finally:
        stack.close()


def _run_local(stack: Stack, job: Job, show: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    from app.jobs import job_summary

    print(f"job {job.id} running in this process", file=sys.stderr)
    try:
        finished = stack.jobs.run(job, on_progress=lambda j: show(job_summary(j)))
    except KeyboardInterrupt:
        # Nobody would resume an in-process job: end it, keeping what it stored.
        finished = stack.jobs.jobs.cancel(job.id)
    return job_summary(finished)


def _index_build_local(args: argparse.Namespace) -> int:
    from app.jobs import INDEX_JOB
    from index import CollectionExists

    with _local_stack() as stack:
        if args.create:
            with contextlib.suppress(CollectionExists):
                stack.store.create_collection(
                    args.collection, stack.engine.dim, stack.engine.version, args.index
                )
        params = {"source": args.source, "format": args.format}
        job = stack.jobs.submit(INDEX_JOB, args.collection, params)
        return _report(_run_local(stack, job, _show_progress))


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
        "seed": args.seed,
        "hyperparameters": hyperparameters,
    }
    if args.server:
        job = _remote_job(args, "/v1/finetune", params, _show_training)
    else:
        from app.finetune import FINETUNE_JOB

        with _local_stack() as stack:
            job = _run_local(stack, stack.jobs.submit(FINETUNE_JOB, None, params), _show_training)
    sys.stderr.write("\n")
    detail = job["detail"]
    print(
        f"job {job['id']} {job['state']}" + (f" ({job['message']})" if job.get("message") else "")
    )
    if "result_metrics" in detail:
        print(f"version {detail['version']}: beats its base: {detail['beats_base']}")
        print(
            _metrics_table({"base": detail["base_metrics"], "fine-tuned": detail["result_metrics"]})
        )
    return 0 if job["state"] == "succeeded" else 1


def _show_training(job: dict[str, Any]) -> None:
    progress = job["detail"].get("progress")
    phase = job["detail"].get("phase", job["state"])
    if not progress:
        sys.stderr.write(f"\r{phase}   ")
    else:
        sys.stderr.write(
            f"\r{phase}: epoch {progress['epoch'] + 1} step {progress['step'] + 1}/{job['total']}"
            f"  loss {progress['loss']:.4f}  lr {progress['lr']:.2e}"
            f"  {progress['samples_per_second']:,.0f} samples/s   "
        )
    sys.stderr.flush()


def _metrics_table(columns: dict[str, dict[str, float]]) -> str:
    keys = [
        "t2i_r1",
        "t2i_r5",
        "t2i_r10",
        "i2t_r1",
        "i2t_r5",
        "i2t_r10",
        "t2i_mrr",
        "i2t_mrr",
        "t2i_median_rank",
        "i2t_median_rank",
    ]
    lines = ["metric".ljust(18) + "".join(name.rjust(14) for name in columns)]
    for key in keys:
        lines.append(
            key.ljust(18) + "".join(f"{m.get(key, float('nan')):14.3f}" for m in columns.values())
        )
    return "\n".join(lines)


def _eval(args: argparse.Namespace) -> int:
    if args.server:
        import httpx

        body = {"source": args.source, "model": args.model}
        r = httpx.post(
            args.server.rstrip("/") + "/v1/evaluate", json=body, timeout=None, headers=_auth(args)
        )
        if r.status_code != 200:
            raise CliError(_api_message(r))
        result = r.json()
    else:
        with _local_stack() as stack:
            finetuner, engine = stack.finetuner, stack.engine
            encoder = finetuner.encoder_for(args.model or engine.version, engine.encoders)
            images, texts, skipped = finetuner.load_pairs(args.source)
            result = {
                "model": encoder.version,
                "metrics": finetuner.evaluate(encoder, images, texts),
            }
    print(f"model {result['model']} on {args.source} ({int(result['metrics']['pairs'])} pairs)")
    print(_metrics_table({"value": result["metrics"]}))
    return 0


def _models(args: argparse.Namespace) -> int:
    if args.server:
        models = _api_get(args, "/v1/models")["models"]
    else:
        from models.loading import resolve_weights
        from models.registry import ModelRegistry

        settings = _settings()
        active = resolve_weights(
            settings.model,
            settings.pretrained,
            settings.model_cache_dir,
            seed=settings.seed,
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
    row = "{:1} {:40} {:20} {:>10} {:>10}  {}"
    print(row.format("", "version", "method", "base R@5", "new R@5", "base"))
    for m in models:
        base = m["metrics"].get("base", {}).get("t2i_r5")
        new = m["metrics"].get("result", {}).get("t2i_r5")
        print(
            row.format(
                "*" if m["active"] else "",
                m["version"],
                m["method"],
                "" if base is None else f"{base:.1f}",
                "" if new is None else f"{new:.1f}",
                m["base"] or "",
            )
        )
    return 0


def _remote_job(
    args: argparse.Namespace,
    path: str,
    body: dict[str, Any],
    show: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    import httpx

    with httpx.Client(base_url=args.server.rstrip("/"), timeout=60, headers=_auth(args)) as client:
        r = client.post(path, json=body)
        if r.status_code != 202:
            raise CliError(_api_message(r))
        job_id = r.json()["id"]
        print(f"job {job_id} started on {args.server}", file=sys.stderr)
        while True:
            r = client.get(f"/v1/jobs/{job_id}")
            if r.status_code != 200:
                raise CliError(_api_message(r))
            job: dict[str, Any] = r.json()
            show(job)
            if job["state"] in ("succeeded", "failed", "cancelled"):
                return job
            time.sleep(0.5)


def _jobs(args: argparse.Namespace) -> int:
    if args.server:
        jobs = _api_get(args, "/v1/jobs")["jobs"]
    else:
        from app.jobs import job_summary
        from app.stack import open_job_store

        job_store = open_job_store(_settings())
        try:
            jobs = [job_summary(j) for j in job_store.recent()]
        finally:
            job_store.db.close()
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


def _api_get(args: argparse.Namespace, path: str) -> dict[str, Any]:
    import httpx

    r = httpx.get(args.server.rstrip("/") + path, timeout=30, headers=_auth(args))
    if r.status_code != 200:
        raise CliError(_api_message(r))
    body: dict[str, Any] = r.json()
    return body


def _auth(args: argparse.Namespace) -> dict[str, str]:
    key = getattr(args, "api_key", None)
    return {"Authorization": f"Bearer {key}"} if key else {}


def _api_message(r: Any) -> str:
    try:
        err = r.json()["error"]
        return f"{r.status_code} {err['code']}: {err['message']}"
    except (ValueError, KeyError, TypeError):
        return f"{r.status_code}: {r.text[:200]}"


def _demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from app.demo import run

    return run(Path(args.data_dir), args.port, args.pairs, args.epochs)


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

    tune = sub.add_parser("finetune", help="Fine-tune the model on image-caption pairs.")
    tune.add_argument("source", help="manifest or folder of pairs, relative to the import root")
    tune.add_argument(
        "--method", default="contrastive", choices=["contrastive", "linear", "subspace_alignment"]
    )
    tune.add_argument(
        "--eval-source", help="separate evaluation pairs (default: hold out a fraction)"
    )
    tune.add_argument("--eval-fraction", type=float, default=0.1)
    tune.add_argument("--seed", type=int, default=0)
    tune.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="a hyperparameter, e.g. epochs=5"
    )
    tune.add_argument("--server", help="URL of a running server (default: run in this process)")
    tune.add_argument("--api-key", default=os.environ.get("XMODAL_API_KEY"), help=argparse.SUPPRESS)
    tune.set_defaults(func=_finetune)

    ev = sub.add_parser("eval", help="Recall@K, MRR and median rank of a model on pairs.")
    ev.add_argument("source", help="manifest or folder of pairs, relative to the import root")
    ev.add_argument("--model", help="a model version (default: the configured/serving one)")
    ev.add_argument("--server", help="URL of a running server (default: run in this process)")
    ev.add_argument("--api-key", default=os.environ.get("XMODAL_API_KEY"), help=argparse.SUPPRESS)
    ev.set_defaults(func=_eval)

    mods = sub.add_parser("models", help="List model versions.")
    mods.add_argument("--server", help="URL of a running server (default: the local data dir)")
    mods.add_argument("--api-key", default=os.environ.get("XMODAL_API_KEY"), help=argparse.SUPPRESS)
    mods.set_defaults(func=_models)

    demo = sub.add_parser(
        "demo", help="Offline demo: synthetic shapes, fine-tune, activate, serve."
    )
    demo.add_argument("--data-dir", default="demo-data", help="where the demo keeps everything")
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument("--pairs", type=int, default=2000, help="synthetic training pairs")
    demo.add_argument("--epochs", type=int, default=25)
    demo.set_defaults(func=_demo)

    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except CliError as exc:
        print(f"xmodal: {exc}", file=sys.stderr)
        return exc.code
    except Exception as exc:  # a domain error from the local store, sources or model
        from app.errors import AppError
        from index import StoreError
        from models.errors import ModelError

        if isinstance(exc, (StoreError, ModelError, AppError)):
            print(f"xmodal: {exc}", file=sys.stderr)
            return 1
        raise
    return code


if __name__ == "__main__":
    sys.exit(main())
