"""Durable jobs: what a module of tasks and an app use of the job queue.

    from deploy.jobs import task             # @task(): a durable job, run by the consumer
    init_app(app)                            # POST/GET/DELETE /jobs in any Flask app

Everything else an app uses of the stack is in the package `deploy` (its seam), which has
these two as well. Only `task` is imported with this module, so a module of tasks stays
importable by the job consumer without Flask; `init_app` is imported when first used.
"""

from deploy.jobs.registry import task

__all__ = ["task", "init_app"]


def __getattr__(name: str):
    if name == "init_app":
        from deploy.jobs.api import init_app  # noqa: PLC0415  (Flask only for an app)
        return init_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
