"""``xmodal index build``, ``duplicates``, ``reindex`` and ``index-advice``: jobs over a
collection's corpus or vectors, through a server or in this process."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Any

from app.cli.client import CliError
from app.cli.local import api_client, load_settings, local_stack, run_local, succeeded
from app.cli.render import report, show_progress


# --- batch indexing -------------------------------------------------------------------------
def index_build(args: argparse.Namespace) -> int:
    if args.server:
        return _index_build_remote(args)
    return _index_build_local(args)


def _index_build_remote(args: argparse.Namespace) -> int:
    with api_client(args) as client:
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


def _index_build_local(args: argparse.Namespace) -> int:
    from app.service.jobs import INDEX_JOB
    from index import CollectionExists
    from models.sources import SourceError, open_source

    settings = load_settings()
    try:  # before creating anything; the operator's own machine: name the root
        open_source(settings.import_root_dir, args.source, args.format)
    except SourceError as exc:
        raise CliError(f"{exc} ({settings.import_root_dir.resolve()})") from exc
    with local_stack() as stack:
        if args.create:
            with contextlib.suppress(CollectionExists):
                stack.store.create_collection(
                    args.collection, stack.engine.dim, stack.engine.space, args.index
                )
        params = {"source": args.source, "format": args.format}
        if args.ray is not None:
            params.update(engine="ray", ray_address=args.ray or None)
        job = stack.jobs.submit(INDEX_JOB, args.collection, params)
        return report(run_local(stack, job, show_progress))


# --- near-duplicates --------------------------------------------------------------------------
def duplicates(args: argparse.Namespace) -> int:
    """Run a duplicates job; print each group on a line (ids tab-separated), and write the
    whole result as JSON to ``--out`` if given."""
    params = {"threshold": args.threshold, "modality": args.modality}
    if args.server:
        with api_client(args) as client:
            path = f"/v1/collections/{args.collection}/jobs/duplicates"
            job = client.run_job(path, params, show_progress)
            result = client.get(f"/v1/jobs/{job['id']}/result") if succeeded(job) else None
    else:
        from app.service.jobs import DUPLICATES_JOB

        with local_stack() as stack:
            job = run_local(
                stack, stack.jobs.submit(DUPLICATES_JOB, args.collection, params), show_progress
            )
            done = succeeded(job)
            found = stack.duplicates.result_path(job["id"])
            result = json.loads(found.read_text()) if done else None
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


def reindex(args: argparse.Namespace) -> int:
    """Move a collection to another index spec; print what the new index measured."""
    params = {"index": args.index}
    if args.server:
        with api_client(args) as client:
            path = f"/v1/collections/{args.collection}/jobs/reindex"
            job = client.run_job(path, params, show_progress)
    else:
        from app.service.jobs import REINDEX_JOB

        with local_stack() as stack:
            job = run_local(
                stack, stack.jobs.submit(REINDEX_JOB, args.collection, params), show_progress
            )
    sys.stderr.write("\n")
    if not succeeded(job):
        print(
            f"job {job['id']} {job['state']}: {job.get('message') or ''}".rstrip(), file=sys.stderr
        )
        return 1
    report = job["detail"]["report"]
    rows = [{"modality": m, **r} for m, r in report.items() if r["vectors"]]
    print(f"{args.collection} now uses {job['params']['index']}", file=sys.stderr)
    print(_report_table(rows, "modality"))
    return 0


def index_advice(args: argparse.Namespace) -> int:
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
        with api_client(args, timeout=None) as client:
            answer = client.post(f"/v1/collections/{args.collection}/index-advice", body)
    else:
        from index import Modality

        with local_stack() as stack:
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
