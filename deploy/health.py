"""Health, owned by the stack, for any app: `GET /healthz` and `GET /readyz`.

- `/healthz` (liveness): 200 when nginx, gunicorn and a worker answer. It checks nothing
  else, so that an orchestrator never restarts a healthy container for a dependency's fault.
- `/readyz` (readiness): 200 when the app has loaded, the job store is reachable, the
  container is not draining (it got SIGTERM: deploy/drain) and every readiness check the
  app added with `readiness_check(app, check)` passes; else 503 naming what failed.

Both are answered by `HealthMiddleware`, around the app, before it: an app's own route at
either path is never called (a warning at start names it). Their answers are JSON.
"""

import json
import logging
import os
from collections.abc import Callable

from deploy.extension import StackExtension, stack_extension

DRAINING_FLAG = "draining"  # in STACK_RUN_DIR: written by deploy/drain when the container is told to stop
PATHS = ("/healthz", "/readyz")

log = logging.getLogger("deploy.health")


def readiness_check(app, check: Callable[[], object]) -> Callable[[], object]:
    """Add `check` to `app`'s readiness: /readyz answers 503 while it raises or returns
    False. It runs in the app's context, on every /readyz request: keep it quick."""
    stack_extension(app).readiness_checks.append(check)
    return check


class HealthMiddleware:
    def __init__(self, app, flask_app, extension: StackExtension):
        """`app`: the WSGI app to pass other requests to; `flask_app`: the Flask app inside
        it, or None; `extension`: the stack state whose job store and checks /readyz asks."""
        self.app = app
        self.flask_app = flask_app
        self.extension = extension
        self.draining_flag = os.path.join(extension.settings.stack_run_dir, DRAINING_FLAG)
        for path in self.shadowed_routes():
            log.warning("the app's own route for %s is never called: the stack answers %s itself "
                        "(add a readiness check instead: deploy.readiness_check)", path, path)

    def shadowed_routes(self) -> list[str]:
        if self.flask_app is None:
            return []
        adapter = self.flask_app.url_map.bind("localhost")
        return [path for path in PATHS if adapter.test(path, "GET")]

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO")
        if path not in PATHS:
            return self.app(environ, start_response)
        if environ["REQUEST_METHOD"] not in ("GET", "HEAD"):
            return respond(start_response, 405, {"error": "Method Not Allowed",
                                                  "message": f"{path} answers GET and HEAD"}, [("Allow", "GET, HEAD")])
        if path == "/healthz":
            return respond(start_response, 200, {"status": "ok"})
        failures = self.readiness_failures()
        if failures:
            return respond(start_response, 503, {"status": "not ready", "failures": failures})
        return respond(start_response, 200, {"status": "ready"})

    def readiness_failures(self) -> dict[str, str]:
        if os.path.exists(self.draining_flag):
            return {"draining": "the container is stopping: it finishes its requests and takes no new ones"}
        from deploy.jobs.queue import queue_of  # noqa: PLC0415  (huey, only when asked)
        failures = {}
        try:
            queue_of(self.extension).store.ping()
        except Exception as error:
            failures["job store"] = describe(error)
        for check in self.extension.readiness_checks:
            name = getattr(check, "__name__", repr(check))
            try:
                if self.flask_app is not None:
                    with self.flask_app.app_context():
                        passed = check()
                else:
                    passed = check()
            except Exception as error:
                failures[name] = describe(error)
                continue
            if passed is False:
                failures[name] = "returned False"
        return failures


def describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"


def respond(start_response, status: int, body: dict, headers: list | None = None):
    payload = json.dumps(body).encode() + b"\n"
    reason = {200: "OK", 405: "METHOD NOT ALLOWED", 503: "SERVICE UNAVAILABLE"}[status]
    start_response(f"{status} {reason}", [("Content-Type", "application/json"),
                                          ("Content-Length", str(len(payload))), *(headers or [])])
    return [payload]
