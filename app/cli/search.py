"""``xmodal search``: a text search of a running server's collection, with a filter given
as JSON, printed as a table or as the API's JSON."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from app.cli.client import ApiClient, CliError


def add_parser(sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    text = "Search a collection of a running server with a text."
    p = sub.add_parser(
        "search",
        help=text,
        description=text,
        formatter_class=formatter,
        epilog='filters: --filter \'{"year": {"$gte": 2020}, "tag": {"$in": ["a", "b"]}}\' '
        "(docs/search.md lists the operators)",
    )
    p.add_argument("collection", help="the collection")
    p.add_argument("text", help="what to look for")
    p.add_argument("-k", type=int, default=10, help="how many results")
    p.add_argument("--target", choices=["image", "text"], help="modality to find (default: image)")
    p.add_argument("--filter", metavar="JSON", help="keep items whose metadata passes it")
    p.add_argument(
        "--mode",
        choices=["vector", "lexical", "hybrid"],
        help="how texts are ranked: by vectors, by words (BM25), or both (texts only)",
    )
    p.add_argument(
        "--fusion",
        choices=["rrf", "relative"],
        help="how hybrid fuses its rankings: by rank, or by spread-normalised scores",
    )
    p.add_argument("--alpha", type=float, help="with --fusion relative: the vectors' weight")
    p.add_argument("--group-by", metavar="KEY", help="the best hits of each value of KEY")
    p.add_argument("--group-size", type=int, help="with --group-by: hits a group (default 1)")
    p.add_argument(
        "--facet",
        metavar="KEY",
        action="append",
        help="count the most frequent values of KEY among what the filter keeps (repeatable)",
    )
    p.add_argument("--min-score", type=float, help="leave out hits scoring below this cosine")
    p.add_argument("--json", action="store_true", help="print the API's answer as JSON")
    port = os.environ.get("XMODAL_PORT") or "8000"
    p.add_argument(
        "--server",
        metavar="URL",
        default=f"http://127.0.0.1:{port}",
        help="the server to ask",
    )
    p.add_argument("--api-key", default=os.environ.get("XMODAL_API_KEY"), help=argparse.SUPPRESS)
    p.set_defaults(handler="search")


def run(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"text": args.text, "k": args.k}
    if args.target:
        body["target"] = args.target
    if args.min_score is not None:
        body["min_score"] = args.min_score
    if args.mode:
        body["mode"] = args.mode
    optional = {
        "fusion": args.fusion,
        "alpha": args.alpha,
        "group_by": args.group_by,
        "group_size": args.group_size,
        "facets": args.facet,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    if args.filter is not None:
        try:
            body["filter"] = json.loads(args.filter)
        except ValueError as exc:
            raise CliError(f"--filter is not valid JSON: {exc}", code=2) from None
        if not isinstance(body["filter"], dict):
            raise CliError("--filter must be a JSON object", code=2)
    with ApiClient(args.server, args.api_key) as api:
        answer = api.post(f"/v1/collections/{_quoted(args.collection)}/search", body)
    if args.json:
        print(json.dumps(answer, ensure_ascii=False, indent=2))
        return 0
    hits = answer["results"]
    if answer.get("groups") is not None:
        for group in answer["groups"]:
            print(f"{args.group_by} = {json.dumps(group['value'], ensure_ascii=False)}")
            for h in group["results"]:
                print("  " + _line(h))
    else:
        for h in hits:
            print(_line(h))
    if not hits:
        print("no results" + (" (min score cut them)" if args.min_score is not None else ""))
    for key, counts in (answer.get("facets") or {}).items():
        values = ", ".join(
            f"{json.dumps(c['value'], ensure_ascii=False)} ({c['count']})" for c in counts
        )
        print(f"{key}: {values or 'no values'}")
    return 0


def _line(h: dict[str, Any]) -> str:
    shown = h.get("text") or json.dumps(h.get("metadata") or {}, ensure_ascii=False)
    return f"{h['score']:7.3f}  {h['id']}  {shown[:100]}"


def _quoted(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")
