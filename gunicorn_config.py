"""gunicorn's settings in the container. Values that users tune come from deploy.settings
(environment variables, validated there); `gunicorn --print-config` shows the result."""

from deploy.settings import Settings

settings = Settings.from_env()

# --- Server socket ---------------------------------------------------------------------
# A unix socket ($STACK_RUN_DIR/gunicorn.sock): only nginx, in the same container, can
# reach gunicorn. supervisord creates it and keeps it across gunicorn restarts (its
# [fcgi-program:gunicorn]); gunicorn gets it as fd 0.
bind = "fd://0"
backlog = 2048  # connections nginx may queue while every worker is busy

# --- Worker processes ------------------------------------------------------------------
# The app of APP_MODULE with the stack around it (ProxyFix, /healthz and /readyz): deploy/wsgi.py.
wsgi_app = "deploy.wsgi:load()"
worker_class = "gevent"  # one event loop per worker: slow I/O waits without holding the worker
workers = settings.web_concurrency
worker_connections = settings.worker_connections
timeout = settings.timeout
graceful_timeout = settings.graceful_timeout
worker_tmp_dir = "/dev/shm"  # the heartbeat file: memory, not the container's disk

# --- Worker recycling ------------------------------------------------------------------
# A worker that has served max_requests finishes its requests and is replaced, so a leak in
# the app cannot grow for ever. The jitter (up to 10% more, random per worker) keeps the
# workers from being replaced all at once. 0: never.
max_requests = settings.max_requests
max_requests_jitter = settings.max_requests // 10

# --- Server mechanics ------------------------------------------------------------------
pidfile = f"{settings.stack_run_dir}/gunicorn.pid"
proc_name = "gunicorn"
control_socket_disable = True  # supervisord controls gunicorn: no second control interface

# --- Logging ---------------------------------------------------------------------------
loglevel = settings.log_level
errorlog = f"{settings.stack_log_dir}/gunicorn/error.log"
accesslog = f"{settings.stack_log_dir}/gunicorn/access.log"
# The client as the app sees it: nginx's X-Real-IP, the address ProxyFix also derives.
# The request id matches nginx's access log; pid is the worker that served it.
access_log_format = '%({x-real-ip}i)s %(t)s "%(r)s" %(s)s %(B)s %(M)sms rid=%({x-request-id}i)s pid=%(p)s'
# The app's own log (the root logger, so a user's app needs no setup). A WatchedFileHandler
# reopens the file when it is rotated away. gunicorn's loggers keep their own files.
logconfig_dict = {
    "root": {"level": settings.log_level.upper(), "handlers": ["app_file"]},
    "loggers": {},
    "handlers": {
        "app_file": {
            "class": "logging.handlers.WatchedFileHandler",
            "filename": f"{settings.stack_log_dir}/app/app.log",
            "formatter": "app",
        },
    },
    "formatters": {
        "app": {"format": "%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s"},
    },
}
