"""The WSGI application gunicorn serves (`deploy.wsgi:load()`): the app that APP_MODULE
names, wrapped by the stack, so that every app gets the same guarantees without code:

    ProxyFix -> HealthMiddleware -> the app

- ProxyFix trusts exactly one hop of X-Forwarded-For, -Proto, -Host and -Port: nginx, which
  sets them (from its peer, or from a load balancer in TRUSTED_PROXIES), so the app sees the
  real client address, scheme, host and port, and a client cannot forge them.
- HealthMiddleware answers /healthz and /readyz for any app (deploy/health.py).
"""

import logging

from gunicorn.util import import_app
from werkzeug.middleware.proxy_fix import ProxyFix

from deploy.extension import StackExtension, stack_extension
from deploy.health import HealthMiddleware
from deploy.settings import Settings
from deploy.threads import size_thread_pool

log = logging.getLogger("deploy.wsgi")


def wrap(app, settings: Settings):
    """`app` (any WSGI app; a Flask app gets its stack state in app.extensions) with the stack around it."""
    flask_app = app if hasattr(app, "url_map") and hasattr(app, "extensions") else None
    extension = stack_extension(flask_app, settings) if flask_app is not None else StackExtension(settings)
    size_thread_pool(settings.cpu_threads)
    wrapped = HealthMiddleware(app, flask_app, extension)
    return ProxyFix(wrapped, x_for=1, x_proto=1, x_host=1, x_port=1)


def load():
    """gunicorn's entry point, called in each worker: import APP_MODULE, wrap it."""
    settings = Settings.from_env()
    app = import_app(settings.app_module)
    log.info("serving %s", settings.app_module)
    return wrap(app, settings)
