"""``xmodal classify`` (zero-shot labels of a picture) and ``xmodal explain`` (which
regions of a stored picture match a query), against a running server."""

from __future__ import annotations

import argparse
import base64
import json
import os
from pathlib import Path
from typing import Any

from app.cli.client import ApiClient, CliError


def _server_options(p: argparse.ArgumentParser) -> None:
    port = os.environ.get("XMODAL_PORT") or "8000"
    p.add_argument(
        "--server", metavar="URL", default=f"http://127.0.0.1:{port}", help="the server to ask"
    )
    p.add_argument("--api-key", default=os.environ.get("XMODAL_API_KEY"), help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print the API's answer as JSON")


def add_parsers(sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    text = "Rank labels for a picture (zero-shot, the serving model's towers)."
    p = sub.add_parser("classify", help=text, description=text, formatter_class=formatter)
    p.add_argument("picture", help="an image file, or COLLECTION/ITEM_ID with --stored")
    p.add_argument("labels", nargs="+", help="the labels to rank")
    p.add_argument("--stored", action="store_true", help="the picture is a stored item")
    p.add_argument(
        "--template",
        action="append",
        help='a prompt template holding {} once (repeatable; default: "a photo of {}." ...)',
    )
    _server_options(p)
    p.set_defaults(handler="classify")

    text = "Show which regions of a stored picture carry its match with a text."
    p = sub.add_parser("explain", help=text, description=text, formatter_class=formatter)
    p.add_argument("collection", help="the collection")
    p.add_argument("item_id", help="the stored picture")
    p.add_argument("text", help="the query")
    p.add_argument("--grid", type=int, default=7, help="regions a side (2 to 12)")
    p.add_argument("--png", metavar="FILE", type=Path, help="write the picture with the map")
    _server_options(p)
    p.set_defaults(handler="explain")


def classify(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"labels": args.labels}
    if args.template:
        body["templates"] = args.template
    if args.stored:
        collection, sep, item_id = args.picture.partition("/")
        if not sep or not item_id:
            raise CliError("with --stored, the picture is COLLECTION/ITEM_ID", code=2)
        body.update(collection=collection, item_id=item_id)
    else:
        try:
            body["image_base64"] = base64.b64encode(Path(args.picture).read_bytes()).decode()
        except OSError as exc:
            raise CliError(f"cannot read {args.picture}: {exc.strerror}", code=2) from None
    with ApiClient(args.server, args.api_key) as api:
        answer = api.post("/v1/classify", body)
    if args.json:
        print(json.dumps(answer, ensure_ascii=False, indent=2))
        return 0
    for entry in answer["labels"]:
        print(f"{entry['probability']:7.3f}  {entry['label']}")
    return 0


def explain(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    path = f"/v1/collections/{quote(args.collection, safe='')}/explain"
    body = {"item_id": args.item_id, "text": args.text, "grid": args.grid}
    with ApiClient(args.server, args.api_key) as api:
        answer = api.post(path, body)
        if args.png is not None:
            png = api.post_bytes(path, {**body, "format": "png"})
            args.png.write_bytes(png)
    if args.json:
        print(json.dumps(answer, ensure_ascii=False, indent=2))
        return 0
    cells = answer["grid"]
    top = max(max(row) for row in cells) or 1.0
    shades = " .:-=+*#%@"
    print(f"score {answer['score']:.3f}; each region: how much hiding it lowers the score")
    for row in cells:
        print(" ".join(shades[max(0, min(9, int(9 * v / top)))] * 2 for v in row))
    if args.png is not None:
        print(f"wrote {args.png}")
    return 0
