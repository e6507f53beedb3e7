"""gunicorn's settings in the container. Values that users tune come from deploy.settings
(environment variables, validated there); `gunicorn --print-config` shows the result."""

import gc

# The libraries every worker uses, imported once, here, in the master: the workers it forks
# share these pages (copy-on-write) instead of each loading a copy of its own (bench/README.md,
# "Memory"). The app too with PRELOAD_APP=true (preload_app, below); else each worker imports it.
import flask  # noqa: F401
import flask_sock  # noqa: F401

# What gevent's monkey.patch_all() imports in each worker (it patches nothing when imported).
import gevent.local  # noqa: F401
import gevent.monkey  # noqa: F401
import gevent.select  # noqa: F401
import gevent.selectors  # noqa: F401
import gevent.signal  # noqa: F401
import gevent.ssl  # noqa: F401
import gevent.subprocess  # noqa: F401
import gevent.thread  # noqa: F401
import gevent.threading  # noqa: F401
import gevent.time  # noqa: F401
from gunicorn.errors import HaltServer

import deploy.jobs.api  # noqa: F401  (huey; and redis-py, with REDIS_URL: the Dockerfile)
import deploy.wsgi  # noqa: F401
from deploy import gunicorn_errors
from deploy.jobs.queue import JobQueue
from deploy.logs import logging_config, skip_unused_record_fields
from deploy.metrics import exposition
from deploy.metrics.jobs import JobsCollector
from deploy.settings import Settings
from deploy.threads import size_thread_pool
from deploy.worker_hooks import run_post_fork_functions

settings = Settings.from_env()

# --- Server socket ---------------------------------------------------------------------
# A unix socket ($STACK_RUN_DIR/gunicorn.sock): only nginx, in the same container, can
# reach gunicorn. supervisord creates it and keeps it across gunicorn restarts (its
# [fcgi-program:gunicorn]); gunicorn gets it as fd 0.
bind = "fd://0"
backlog = 2048  # connections nginx may queue while every worker is busy

# --- Limits ----------------------------------------------------------------------------
# nginx is gunicorn's only client and has checked each request line and header already (its
# large_client_header_buffers): gunicorn adds no stricter limit of its own, which would refuse
# what nginx let through. What gunicorn still refuses, it answers in JSON (deploy/gunicorn_errors.py).
limit_request_line = 0
limit_request_fields = 32768  # gunicorn's most; nginx's header buffers allow fewer
limit_request_field_size = 0
permit_unconventional_http_method = True  # nginx passes any method of capital letters, _ and -
gunicorn_errors.install()

# --- Worker processes ------------------------------------------------------------------
# The app of APP_MODULE with the stack around it (ProxyFix, /healthz and /readyz): deploy/wsgi.py.
wsgi_app = "deploy.wsgi:load()"
# PRELOAD_APP=true: the app (and the model it loads) is imported once, here in the master, and
# the workers are forks that share its memory; a replacement worker is a fork too. gevent is not
# patched in the master: each worker patches itself when it starts (post_worker_init runs after).
preload_app = settings.preload_app
# gevent: one event loop per worker, so slow I/O waits without holding the worker; this one is
# fair to nginx's kept-alive connections and closes its listener at once when it is to stop.
worker_class = "deploy.gunicorn_worker.FairGeventWorker"
keepalive = 5  # seconds an idle kept-alive connection from nginx stays open: nginx closes it first (4 s)
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
# gunicorn's access and error logs and the app's own (the root logger, so a user's app needs
# no setup), to files or stdout, in text or JSON: deploy/logs.py, from LOG_TARGET and
# LOG_FORMAT. The access lines are records with fields (the client as the app sees it, the
# request id nginx gave, the worker's pid), formatted like every other log.
loglevel = settings.log_level
logger_class = "deploy.access_log.AccessLog"
logconfig_dict = logging_config(settings, "gunicorn")
skip_unused_record_fields()


# --- Hooks ----------------------------------------------------------------------------
def on_starting(server):
    """Two corrections to gunicorn's master for the container:
    - The listening socket is supervisord's (fd 0), kept across gunicorn's restarts (`reload app`
      with PRELOAD_APP restarts gunicorn): gunicorn must not unlink its path when it stops, or
      nginx could not reach the next gunicorn. gunicorn leaves the path of a socket systemd
      handed it, and that flag does nothing else here (it would matter only to a USR2 re-exec,
      which supervisord's gunicorn never does).
    - When the app cannot load, every worker exits with the same error. gunicorn halts at the
      first and, reaping the next while it stops, raises the same HaltServer again, out of its
      halt: a traceback after the app's own message. Halting, the others' exits are expected."""
    server.systemd = True
    halt, reap_workers = server.halt, server.reap_workers

    def reap_while_halting():
        try:
            reap_workers()
        except HaltServer:
            pass

    def halt_once(reason=None, exit_status=0):
        server.reap_workers = reap_while_halting
        halt(reason, exit_status)
    server.halt = halt_once


def pre_fork(server, worker):
    """What the master holds stays out of its workers' garbage collections, which would touch
    (and so copy) every object's page."""
    gc.freeze()


def post_worker_init(worker):
    """In each worker, once it has started (gevent patched) and loaded the app, before it
    serves: its pool of OS threads, the app's `post_fork` functions (what a fork must not
    share: threads, sockets, connections), then the same freeze for what the worker has loaded:
    objects that live as long as the worker are no garbage, and a full collection, every few
    hundred requests, need not walk them."""
    size_thread_pool(settings.cpu_threads)
    run_post_fork_functions()
    gc.freeze()


def when_ready(server):
    """The master serves the metrics (METRICS_PORT): every worker's, nginx's, its own, the jobs'."""
    if settings.metrics_port:
        exposition.serve(settings, exposition.NginxCollector(f"{settings.stack_run_dir}/nginx-status.sock"),
                         exposition.GunicornCollector(server), JobsCollector(lambda: JobQueue(settings).store))


def child_exit(server, worker):
    """A worker ended: its counters stay counted (prometheus-client's multiprocess mode). One
    that served MAX_REQUESTS had the master start its replacement first (SIGTTIN, from
    deploy/gunicorn_worker.py): the master goes back to WEB_CONCURRENCY workers."""
    exposition.mark_process_dead(worker.pid)
    if server.num_workers > server.cfg.workers:
        server.num_workers = server.cfg.workers
