"""The WSGI application gunicorn serves (`deploy.wsgi:load()`): the app that APP_MODULE
names, wrapped by the stack, so that every app gets the same guarantees without code:

    ProxyFix -> HealthMiddleware -> the request id -> RequestMetrics -> the app

- ProxyFix trusts exactly one hop of X-Forwarded-For, -Proto, -Host and -Port: nginx, which
  sets them (from its peer, or from a load balancer in TRUSTED_PROXIES), so the app sees the
  real client address, scheme, host and port, and a client cannot forge them.
- HealthMiddleware answers /healthz and /readyz for any app (deploy/health.py).
- The request id nginx gave (X-Request-ID) is on every log line written while serving the
  request, whichever logger writes it (deploy/logs.py).
- RequestMetrics counts and times the app's answers, and the batches of its @batched functions
  are counted (deploy/metrics/requests.py; METRICS_PORT=0: not).
"""

import logging

from gunicorn.errors import AppImportError
from gunicorn.util import import_app
from werkzeug.middleware.proxy_fix import ProxyFix

from deploy import batching
from deploy.extension import StackExtension, stack_extension
from deploy.health import HealthMiddleware
from deploy.jobs.registry import TaskDefinitionError
from deploy.logs import REQUEST_ID
from deploy.settings import Settings

log = logging.getLogger("deploy.wsgi")


def wrap(app, settings: Settings):
    """`app` (any WSGI app; a Flask app gets its stack state in app.extensions) with the stack around it."""
    flask_app = app if hasattr(app, "url_map") and hasattr(app, "extensions") else None
    extension = stack_extension(flask_app, settings) if flask_app is not None else StackExtension(settings)
    if flask_app is not None and settings.allowed_hosts:
        # Flask's own check agrees with nginx's (which refuses the others first): "*.x" is Flask's ".x".
        flask_app.config["TRUSTED_HOSTS"] = [name[1:] if name.startswith("*.") else name
                                             for name in settings.allowed_hosts]
    if settings.metrics_port:
        from deploy.metrics.requests import RequestMetrics, observe_batch  # noqa: PLC0415  (prometheus-client only when counting)
        app = RequestMetrics(app, flask_app)
        batching.set_observer(observe_batch)
    else:
        batching.set_observer(batching.count_nothing)
    wrapped = HealthMiddleware(with_request_id(app), flask_app, extension)
    return ProxyFix(wrapped, x_for=1, x_proto=1, x_host=1, x_port=1)


def with_request_id(app):
    def serve(environ, start_response):
        # Each request runs in a greenlet (or thread) of its own, with its own context.
        REQUEST_ID.set(environ.get("HTTP_X_REQUEST_ID"))
        return app(environ, start_response)
    return serve


def load():
    """gunicorn's entry point, called in each worker: import APP_MODULE, wrap it. A task defined
    wrongly in the app stops gunicorn with its message alone (gunicorn prints an AppImportError
    without a traceback)."""
    settings = Settings.from_env()
    try:
        app = import_app(settings.app_module)
    except TaskDefinitionError as error:
        raise AppImportError(f"APP_MODULE {settings.app_module}: {error}") from None
    log.info("serving %s", settings.app_module)
    return wrap(app, settings)
