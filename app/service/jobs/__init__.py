"""Background jobs: the loop (``loop``) and one runner per kind of job."""

from app.service.jobs.adapt import ActivateRunner, FinetuneRunner
from app.service.jobs.duplicates import DUPLICATES_JOB, DuplicatesRunner
from app.service.jobs.index import INDEX_JOB, IndexRunner
from app.service.jobs.loop import JobFailed, JobManager, JobStopped, Runner, job_summary
from app.service.jobs.reindex import REINDEX_JOB, ReindexRunner

__all__ = [
    "DUPLICATES_JOB",
    "INDEX_JOB",
    "REINDEX_JOB",
    "ReindexRunner",
    "ActivateRunner",
    "DuplicatesRunner",
    "FinetuneRunner",
    "IndexRunner",
    "JobFailed",
    "JobManager",
    "JobStopped",
    "Runner",
    "job_summary",
]
