"""The ``xmodal`` command line: its commands, their options and their help.

Every option says what it does in one line and shows its default; ``serve --help`` lists
the settings that pick the model, since they come from the environment, not from options.
Each command's handler is named by ``handler``; ``app.cli.commands`` maps it to a function.
"""

from __future__ import annotations

import argparse
import os

from app.cli.pictures import add_parsers as add_picture_parsers
from app.cli.search import add_parser as add_search_parser
from app.cli.snapshot import add_parser as add_snapshot_parser
from models.adapt.methods import METHODS

FORMATS = ["jsonl", "csv", "parquet", "folder", "webdataset"]
# The settings ``serve --help`` names, in a few words each; their defaults come from Settings.
SERVE_SETTINGS = {
    "model": "OpenCLIP architecture, or xmodal-tiny",
    "pretrained": "pretrained tag, a checkpoint file, or none (random weights)",
    "device": "auto (CUDA when present), cpu, cuda, cuda:1, ...",
    "data_dir": "collections, images, jobs, model versions",
    "model_cache": "downloaded weights (unset: <data dir>/models)",
    "host": "bind address",
    "port": "port",
    "log_format": "auto (text at a terminal, else json), text or json",
    "api_keys": "comma-separated keys that writes need",
    "api_keys_file": "a JSON file of keys scoped to collections (read, write, admin)",
}


class Formatter(argparse.RawDescriptionHelpFormatter):
    """One line per option with its default, when it has one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "%(default)" in text
            or not action.option_strings
            or action.default is None
            or action.default is False
            or action.default == argparse.SUPPRESS
        ):
            return text
        return f"{text} (default: %(default)s)"


def _settings_epilog() -> str:
    """The settings that pick the model, and a few more, with their defaults."""
    from app.service.config import Settings

    fields = Settings.model_fields

    def row(name: str, text: str) -> str:
        value = fields[name].get_default(call_default_factory=True)
        default = "" if value in (None, []) else f" [{value}]"
        return f"  XMODAL_{name.upper():<13} {text}{default}"

    return "\n".join(
        [
            "settings (XMODAL_* environment variables, [default]; all in README.md):",
            *(row(name, text) for name, text in SERVE_SETTINGS.items()),
            "offline, without weights:",
            "  XMODAL_MODEL=xmodal-tiny XMODAL_PRETRAINED=none xmodal serve  (random weights)",
            "  xmodal demo  (fine-tunes the tiny model on synthetic pictures, then serves)",
        ]
    )


def _server_options(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--server", metavar="URL", help=f"a running server ({what})")
    parser.add_argument(
        "--api-key", default=os.environ.get("XMODAL_API_KEY"), help=argparse.SUPPRESS
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xmodal",
        description="Cross-modal retrieval service. `xmodal COMMAND --help` for each.",
        formatter_class=Formatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str, epilog: str | None = None) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, help=text, description=text, epilog=epilog, formatter_class=Formatter
        )

    serve = command(
        "serve",
        "Run the HTTP server (settings from XMODAL_* variables).",
        epilog=_settings_epilog(),
    )
    serve.add_argument("--host", help="bind address (default: XMODAL_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: XMODAL_PORT or 8000)")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes on this port, sharing one catalogue (docs/backends-and-scaling.md)",
    )
    serve.add_argument("--fd", type=int, help=argparse.SUPPRESS)  # a worker's socket
    serve.set_defaults(handler="serve")

    index = command("index", "Build indexes from corpora on disk.")
    index_sub = index.add_subparsers(dest="index_command", required=True, metavar="COMMAND")
    build_text = "Index SOURCE (relative to the import root) into a collection as a job."
    build = index_sub.add_parser(
        "build", help=build_text, description=build_text, formatter_class=Formatter
    )
    build.add_argument(
        "source", help="manifest (.jsonl/.csv/.parquet), image folder or .tar shards"
    )
    build.add_argument("--collection", required=True, help="the collection to index into")
    build.add_argument(
        "--format", choices=FORMATS, help="the source's format (default: from its name)"
    )
    _server_options(build, "default: run the job in this process on XMODAL_DATA_DIR")
    build.add_argument("--create", action="store_true", help="create the collection if missing")
    build.add_argument(
        "--index", metavar="SPEC", help="FAISS spec for a collection --create makes (default: Flat)"
    )
    build.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="run on Ray: a local cluster, or the one at ADDRESS (in this process only; "
        "with --server, the server's XMODAL_RAY_ADDRESS)",
    )
    build.set_defaults(handler="index build")

    jobs = command("jobs", "List jobs (of a server, or of the local data dir).")
    _server_options(jobs, "default: the jobs of XMODAL_DATA_DIR")
    jobs.set_defaults(handler="jobs")

    dup = command("duplicates", "Groups of near-duplicate items of a collection, as a job.")
    dup.add_argument("collection", help="the collection to look through")
    dup.add_argument(
        "--threshold", type=float, default=0.95, help="cosine at which two items are duplicates"
    )
    dup.add_argument("--modality", choices=["image", "text"], default="image", help="which items")
    dup.add_argument("--out", metavar="FILE", help="write the groups there as JSON too")
    _server_options(dup, "default: run the job in this process on XMODAL_DATA_DIR")
    dup.set_defaults(handler="duplicates")

    rx = command("reindex", "Move a collection to another FAISS index spec, no re-embedding.")
    rx.add_argument("collection", help="the collection")
    rx.add_argument("index", help="the new spec, e.g. HNSW32 or IVF1024,PQ64")
    _server_options(rx, "default: run the job in this process on XMODAL_DATA_DIR")
    rx.set_defaults(handler="reindex")

    adv = command("index-advice", "Measure index specs on a collection's vectors; pick one.")
    adv.add_argument("collection", help="the collection")
    adv.add_argument("--recall-at-10", type=float, default=0.95, help="target recall@10")
    adv.add_argument("--recall-at-1", type=float, default=None, help="target recall@1")
    adv.add_argument("--p50-ms", type=float, default=None, help="target median latency")
    adv.add_argument("--sample", type=int, default=5000, help="vectors to build each index on")
    adv.add_argument("--modality", choices=["image", "text"], help="whose vectors (default: more)")
    _server_options(adv, "default: measure in this process on XMODAL_DATA_DIR")
    adv.set_defaults(handler="index-advice")

    tune = command("finetune", "Fine-tune the model on image-caption pairs.")
    tune.add_argument("source", help="manifest or folder of pairs, relative to the import root")
    tune.add_argument("--method", default="contrastive", choices=list(METHODS), help="the method")
    tune.add_argument(
        "--eval-source", help="separate evaluation pairs (default: hold out --eval-fraction)"
    )
    tune.add_argument(
        "--eval-fraction", type=float, default=0.1, help="share of the pairs held out"
    )
    tune.add_argument(
        "--target-source",
        help="images and texts of the domain to adapt to, pairing ignored (adversarial,"
        " subspace_alignment)",
    )
    tune.add_argument("--seed", type=int, default=0, help="seed of the split and the training")
    tune.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="a hyperparameter, e.g. epochs=5"
    )
    _server_options(tune, "default: train in this process")
    tune.set_defaults(handler="finetune")

    ev = command("eval", "Recall@K, MRR and median rank of a model on pairs.")
    ev.add_argument("source", help="manifest or folder of pairs, relative to the import root")
    ev.add_argument("--model", help="a model version (default: the configured/serving one)")
    _server_options(ev, "default: evaluate in this process")
    ev.set_defaults(handler="eval")

    add_search_parser(sub, Formatter)
    add_picture_parsers(sub, Formatter)
    add_snapshot_parser(sub, Formatter)

    mods = command("models", "List model versions.")
    _server_options(mods, "default: the versions in XMODAL_DATA_DIR")
    mods.set_defaults(handler="models")

    demo = command("demo", "Offline demo: synthetic shapes, fine-tune, activate, serve.")
    demo.add_argument("--data-dir", default="demo-data", help="where the demo keeps everything")
    demo.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("XMODAL_PORT") or 8000),
        help="port of the demo's server (XMODAL_PORT or 8000)",
    )
    demo.add_argument("--pairs", type=int, default=2000, help="synthetic training pairs")
    demo.add_argument("--epochs", type=int, default=25, help="fine-tuning epochs")
    demo.set_defaults(handler="demo")
    return parser
