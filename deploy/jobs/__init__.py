"""Durable jobs: what a module of tasks and an app use of the job queue.

    from deploy.jobs import task, progress, init_app
    @task()                                  # a durable job, run by the consumer
    progress(0.4, "step 2 of 5")             # inside a task: how far it is (and a point to stop)
    init_app(app)                            # the /jobs API in any Flask app

Everything else an app uses of the stack is in the package `deploy` (its seam), which has
these as well. Each is imported when first used: importing this package costs nothing, so the
job consumer (deploy/jobs/consumer.py) can let gevent patch the standard library before
anything imports huey; `task` and `progress` need no Flask.
"""

import importlib

_NAMES = {"task": "deploy.jobs.registry", "progress": "deploy.jobs.running", "init_app": "deploy.jobs.api"}

__all__ = list(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
