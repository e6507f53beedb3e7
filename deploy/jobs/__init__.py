"""What an app uses of the stack, all from here (the seam between the stack and your service):

    from deploy.jobs import task             # @task(): a durable job, run by the consumer
    jobs.init_app(app)                       # POST/GET/DELETE /jobs in any Flask app
    in_os_thread(function, *args)            # CPU-heavy native code off the event loop
    after_response({"name": function})      # short work after the answer, may be lost
    readiness_check(app, check)              # your own condition for GET /readyz
    json_errors(app)                         # every error of the app as JSON (an API's choice)

Only `task` and `in_os_thread` are imported with this module, so a module of tasks stays
importable by the job consumer without Flask; the others are imported when first used.
"""

import importlib

from deploy.jobs.registry import task
from deploy.threads import in_os_thread

__all__ = ["task", "in_os_thread", "init_app", "after_response", "readiness_check", "json_errors"]

_IMPORTED_WHEN_USED = {
    "init_app": "deploy.jobs.api",
    "after_response": "deploy.background",
    "readiness_check": "deploy.health",
    "json_errors": "deploy.errors",
}


def __getattr__(name: str):
    if name in _IMPORTED_WHEN_USED:
        return getattr(importlib.import_module(_IMPORTED_WHEN_USED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
