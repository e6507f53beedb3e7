"""The stack's seam: everything an app uses of the stack is imported from here.

    from deploy import task, progress, init_app, in_os_thread, after_response, readiness_check, json_errors
    from deploy import batched, post_fork

    @task()                                  # a durable job, run by the consumer (or @task(cron=...))
    progress(0.4, "step 2 of 5")             # inside a task: how far it is
    init_app(app)                            # the /jobs API in any Flask app
    in_os_thread(function, *args)            # CPU-heavy native code off the event loop
    after_response({"name": function})       # short work after the answer, may be lost
    readiness_check(app, check)              # your own condition for GET /readyz
    json_errors(app)                         # every error of the app as JSON (an API's choice)
    @batched(max_size=32, max_wait_ms=5)     # concurrent calls of a worker gathered into one call
    @post_fork                               # run in every gunicorn worker before it serves

Each name is imported from its module when it is first used, so that importing this package
costs nothing: a module of tasks (`from deploy import task`) stays importable by the job
consumer without Flask, and the stack's own processes import only what they use.
"""

import importlib

# Each name of the seam, and the module that holds it.
_SEAM = {
    "task": "deploy.jobs.registry",
    "progress": "deploy.jobs.running",
    "init_app": "deploy.jobs.api",
    "in_os_thread": "deploy.threads",
    "after_response": "deploy.background",
    "readiness_check": "deploy.health",
    "json_errors": "deploy.errors",
    "batched": "deploy.batching",
    "post_fork": "deploy.worker_hooks",
}

__all__ = list(_SEAM)


def __getattr__(name: str):
    if name in _SEAM:
        return getattr(importlib.import_module(_SEAM[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
