"""``xmodal snapshot create NAME`` and ``xmodal snapshot restore FILE --collection NAME``:
a collection to one archive file and back, through a server (``--server``) or in this
process on ``XMODAL_DATA_DIR``."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from app.cli.client import CliError
from app.cli.local import api_client, local_stack, run_local
from app.cli.render import show_progress


def add_parser(sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    text = "Snapshots: a collection to one archive file, and a new collection from one."
    p = sub.add_parser("snapshot", help=text, description=text, formatter_class=formatter)
    snap = p.add_subparsers(dest="snapshot_command", required=True, metavar="COMMAND")
    create = snap.add_parser(
        "create", help="write a collection to an archive", formatter_class=formatter
    )
    create.add_argument("collection", help="the collection")
    create.add_argument("--out", metavar="FILE", help="also copy (or download) the archive there")
    restore = snap.add_parser(
        "restore", help="create a collection from an archive", formatter_class=formatter
    )
    restore.add_argument("file", help="the archive (uploaded to a --server)")
    restore.add_argument("--collection", required=True, help="the collection to create")
    restore.add_argument(
        "--reembed", action="store_true", help="encode again an archive of another space"
    )
    for q in (create, restore):
        q.add_argument("--server", metavar="URL", help="a running server (default: in process)")
        q.add_argument(
            "--api-key", default=os.environ.get("XMODAL_API_KEY"), help=argparse.SUPPRESS
        )
    p.set_defaults(handler="snapshot")


def run(args: argparse.Namespace) -> int:

    if args.snapshot_command == "create":
        path = f"/v1/collections/{args.collection}/snapshots"
        if args.server:
            with api_client(args, timeout=None) as api:
                job = api.run_job(path, {}, show_progress)
                sys.stderr.write("\n")
                _check(job)
                name = job["detail"]["snapshot"]
                if args.out:
                    with open(args.out, "wb") as out, api.http.stream("GET", f"{path}/{name}") as r:
                        if r.status_code != 200:
                            raise CliError(f"download failed: {r.status_code}")
                        for block in r.iter_bytes():
                            out.write(block)
        else:
            from app.service.jobs.snapshots import SNAPSHOT_JOB

            with local_stack() as stack:
                job = run_local(
                    stack, stack.jobs.submit(SNAPSHOT_JOB, args.collection, {}), show_progress
                )
                sys.stderr.write("\n")
                _check(job)
                name = job["detail"]["snapshot"]
                kept = stack.archives.path(args.collection, name)
                if args.out:
                    shutil.copyfile(kept, args.out)
        print(f"{name}: {job['detail']['items']} items, {job['detail']['size']:,} bytes")
        return 0
    source = Path(args.file)
    if not source.is_file():
        raise CliError(f"{args.file}: no such file", code=2)
    if args.server:
        with api_client(args, timeout=None) as api, source.open("rb") as f:
            r = api.http.post(
                f"/v1/collections/{args.collection}/snapshots/restore",
                files={"file": (source.name, f, "application/x-tar")},
                data={"reembed": "true" if args.reembed else "false"},
            )
            created = api._json(r, 202)
            job = api.wait_job(created["id"], show_progress)
    else:
        from app.service.jobs.snapshots import RESTORE_JOB

        params = {"local": str(source.resolve()), "reembed": args.reembed}
        with local_stack() as stack:
            job = run_local(
                stack, stack.jobs.submit(RESTORE_JOB, args.collection, params), show_progress
            )
    sys.stderr.write("\n")
    _check(job)
    print(f"{args.collection}: restored, {job['detail']['items']} items")
    return 0


def _check(job: dict[str, Any]) -> None:
    if job["state"] != "succeeded":
        raise CliError(f"job {job['id']} {job['state']}: {job.get('message') or ''}".rstrip())
