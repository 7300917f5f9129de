"""Background jobs: the loop (``loop``) and one runner per kind of job."""

from app.jobs.adapt import ActivateRunner, FinetuneRunner
from app.jobs.index import INDEX_JOB, IndexRunner
from app.jobs.loop import JobFailed, JobManager, JobStopped, Runner, job_summary

__all__ = [
    "INDEX_JOB",
    "ActivateRunner",
    "FinetuneRunner",
    "IndexRunner",
    "JobFailed",
    "JobManager",
    "JobStopped",
    "Runner",
    "job_summary",
]
