"""The ``xmodal`` command: serve, index build, jobs, finetune, eval, models, demo.

Commands with ``--server`` talk to a running server (``app.cli.client``); without it they
build the stack in this process and run their job in the calling thread.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from app.cli import pictures
from app.cli import search as search_command
from app.cli import snapshot as snapshot_command
from app.cli.client import CliError
from app.cli.index_commands import duplicates, index_advice, index_build, reindex
from app.cli.local import api_client, load_settings, local_stack, run_local
from app.cli.parser import build_parser
from app.cli.render import (
    finetune_summary,
    jobs_table,
    metrics_table,
    models_table,
    show_training,
    torch_mismatch,
)


def _serve(args: argparse.Namespace) -> int:
    from app.service.logs import configure
    from models.errors import ModelLoadError
    from models.loading import resolve_weights

    settings = load_settings()
    host = args.host or settings.host
    port = args.port or settings.port
    settings = settings.model_copy(update={"host": host, "port": port})
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
    if args.workers < 1:
        raise CliError("--workers is at least 1", 2)
    if args.workers > 1:
        from app.cli.workers import Workers

        return Workers(settings, args.workers).run()
    import uvicorn

    from app.api.main import create_app
    from app.api.server import DrainingServer

    app = create_app(settings)
    app.state.services.accept_when_ready = args.fd is not None
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
    # A worker of ``--workers`` accepts from the socket its supervisor bound.
    sockets = None if args.fd is None else [socket.socket(fileno=args.fd)]
    DrainingServer(config, app.state.services, settings.shutdown_drain_s).run(sockets)
    return 0


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
        with api_client(args) as client:
            job = client.run_job("/v1/finetune", params, show_training)
    else:
        from app.service.finetune import FINETUNE_JOB

        with local_stack() as stack:
            job = run_local(stack, stack.jobs.submit(FINETUNE_JOB, None, params), show_training)
    sys.stderr.write("\n")
    print(finetune_summary(job))
    return 0 if job["state"] == "succeeded" else 1


def _eval(args: argparse.Namespace) -> int:
    if args.server:
        with api_client(args, timeout=None) as client:
            result = client.post("/v1/evaluate", {"source": args.source, "model": args.model})
    else:
        with local_stack() as stack:
            engine = stack.engine
            result = stack.finetuner.evaluate_source(
                args.source, args.model or engine.version, engine.encoders
            )
    print(f"model {result['model']} on {args.source} ({int(result['metrics']['pairs'])} pairs)")
    print(metrics_table({"value": result["metrics"]}))
    return 0


def _models(args: argparse.Namespace) -> int:
    if args.server:
        with api_client(args) as client:
            models = client.get("/v1/models")["models"]
    else:
        from models.loading import resolve_weights
        from models.registry import ModelRegistry

        settings = load_settings()
        active = resolve_weights(
            settings.model,
            settings.pretrained,
            settings.model_cache_dir,
            check_only=True,
        ).version
        models = [
            {"version": active, "base": None, "method": "pretrained", "metrics": {}, "active": True}
        ]
        for v in ModelRegistry(settings.shared_root / "versions").versions():
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
        with api_client(args) as client:
            jobs = client.get("/v1/jobs")["jobs"]
    else:
        from app.service.jobs import job_summary
        from app.service.stack import open_job_store

        job_store = open_job_store(load_settings())
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
    "index build": index_build,
    "jobs": _jobs,
    "finetune": _finetune,
    "eval": _eval,
    "models": _models,
    "demo": _demo,
    "duplicates": duplicates,
    "reindex": reindex,
    "index-advice": index_advice,
    "search": search_command.run,
    "classify": pictures.classify,
    "explain": pictures.explain,
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
