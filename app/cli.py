"""The ``xmodal`` command."""

from __future__ import annotations

import argparse
import logging
import sys

from pydantic import ValidationError


def _serve(args: argparse.Namespace) -> int:
    from app.config import Settings
    from models.errors import ModelLoadError
    from models.loading import resolve_weights

    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"xmodal: invalid settings:\n{exc}", file=sys.stderr)
        return 2
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xmodal", description="Cross-modal retrieval service.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="Run the HTTP server (settings from XMODAL_* variables).")
    serve.add_argument("--host", help="bind address (default: XMODAL_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: XMODAL_PORT or 8000)")
    serve.set_defaults(func=_serve)
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
