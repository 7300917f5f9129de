"""What the ``xmodal`` command prints: job progress lines, reports and tables."""

from __future__ import annotations

import sys
from typing import Any

METRIC_KEYS = (
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
)


def show_progress(job: dict[str, Any]) -> None:
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


def show_training(job: dict[str, Any]) -> None:
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


def report(job: dict[str, Any]) -> int:
    """An index job's end: its state and time, then its images and texts, new, unchanged
    (stored already with the same content and model) and failed, then the failures."""
    sys.stderr.write("\n")
    elapsed = ""
    if job.get("started_at") and job.get("finished_at"):
        elapsed = f" in {job['finished_at'] - job['started_at']:,.1f} s"
    message = f" ({job['message']})" if job.get("message") else ""
    print(
        f"job {job['id']} {job['state']}{elapsed}: {job['done']} done, {job['failed']} failed"
        + message
    )
    counts = job.get("detail", {}).get("counts", {})
    for kind in ("images", "texts"):
        new, same, bad = (counts.get(f"{kind}_{n}", 0) for n in ("new", "unchanged", "failed"))
        if new or same or bad:
            print(f"  {kind + ':':8}{new:>9,} new {same:>9,} unchanged {bad:>9,} failed")
    for err in job["errors"][:20]:
        print(f"  failed {err['item']}: {err['reason']}")
    if len(job["errors"]) > 20 or job["failed"] > len(job["errors"]):
        print(f"  ... {job['failed'] - min(20, len(job['errors']))} more failures")
    return 0 if job["state"] == "succeeded" else 1


def metrics_table(columns: dict[str, dict[str, float]]) -> str:
    lines = ["metric".ljust(18) + "".join(name.rjust(14) for name in columns)]
    for key in METRIC_KEYS:
        lines.append(
            key.ljust(18) + "".join(f"{m.get(key, float('nan')):14.3f}" for m in columns.values())
        )
    return "\n".join(lines)


def models_table(models: list[dict[str, Any]]) -> str:
    row = "{:1} {:40} {:20} {:>10} {:>10}  {}"
    lines = [row.format("", "version", "method", "base R@5", "new R@5", "built on")]
    for m in models:
        base = m["metrics"].get("base", {}).get("t2i_r5")
        new = m["metrics"].get("result", {}).get("t2i_r5")
        lines.append(
            row.format(
                "*" if m["active"] else "",
                m["version"],
                m["method"],
                "" if base is None else f"{base:.1f}",
                "" if new is None else f"{new:.1f}",
                m["base"] or "",
            )
        )
    return "\n".join(lines)


def jobs_table(jobs: list[dict[str, Any]]) -> str:
    row = "{:16}  {:8}  {:9}  {:16}  {:>8}  {:>7}  {:>8}  {}"
    lines = [row.format("id", "kind", "state", "collection", "done", "failed", "total", "source")]
    for j in jobs:
        total = "" if j["total"] is None else j["total"]
        lines.append(
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
    return "\n".join(lines)


def finetune_summary(job: dict[str, Any]) -> str:
    """A fine-tune job's end: its state and, when it made a version, the two evaluations."""
    detail = job["detail"]
    message = f" ({job['message']})" if job.get("message") else ""
    lines = [f"job {job['id']} {job['state']}{message}"]
    if "result_metrics" in detail:
        beats = "yes" if detail["beats_base"] else "no"
        lines.append(f"version {detail['version']}: beats its base: {beats}")
        columns = {"base": detail["base_metrics"], "fine-tuned": detail["result_metrics"]}
        lines.append(metrics_table(columns))
    speed = detail.get("speed")
    if speed:  # a distilled query encoder
        lines.append(
            f"texts/s (batch 256): {speed['base_texts_per_second']:,.0f} ->"
            f" {speed['result_texts_per_second']:,.0f} ({speed['speedup']:.2f}x);"
            f" one text: {speed['base_single_text_ms']:.2f} ->"
            f" {speed['result_single_text_ms']:.2f} ms"
        )
    return "\n".join(lines)


def torch_mismatch(exc: BaseException) -> str | None:
    """One sentence for a torchvision built for another torch (its compiled operators fail
    to register at import: ``operator torchvision::nms does not exist``), else None."""
    if not isinstance(exc, RuntimeError) or "torchvision::" not in str(exc):
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        torch, vision = version("torch"), version("torchvision")
    except PackageNotFoundError:
        torch = vision = "?"
    return (
        f"torch {torch} and torchvision {vision} do not belong together (torchvision's "
        "compiled operators did not load): install them as one pair, e.g. `make clean && "
        "make run`, which takes both from the same place"
    )
