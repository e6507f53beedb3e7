"""Prometheus metrics (prometheus-client), on their own port (METRICS_PORT, never port 80).

Every process of the stack counts into prometheus-client's multiprocess mode: the entrypoint
empties PROMETHEUS_MULTIPROC_DIR at start, each gunicorn worker and consumer process writes
its counters there, and one exposition sums them all, a worker that was replaced included
(its counters stay counted; gunicorn's `child_exit` hook marks it dead, as the library asks).
The exposition runs in the gunicorn master (ROLE=all or web) or in the consumer (ROLE=worker):

    flask_stack_http_requests_total{method,route,status}   requests answered by the app; route
                                                           is the Flask rule (bounded), not the path
    flask_stack_http_request_duration_seconds{method,route}  their latency (histogram)
    flask_stack_batch_size{function}                        calls per batch of a @batched function (histogram)
    flask_stack_batch_wait_seconds{function}                each call's wait from its arrival to its batch's start
    flask_stack_gunicorn_workers                            gunicorn's running workers
    nginx_connections_{active,reading,writing,waiting}      nginx's stub_status
    nginx_connections_{accepted,handled}_total, nginx_http_requests_total, nginx_up
    flask_stack_jobs{status,task}                           queued and running jobs, from the store
    flask_stack_jobs_oldest_queued_age_seconds              how long the oldest queued job has waited
    flask_stack_jobs_finished_total{task,status}            jobs ended done, failed or interrupted
    flask_stack_jobs_store_up                               whether the job store answered

A failure to count never fails a request: it is logged once and the request goes on.
"""

import http.client
import logging
import os
import socket
import time

from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess, start_wsgi_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

log = logging.getLogger("deploy.metrics")

METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}  # any other: OTHER (bounded labels)
ROUTE_KEY = "flask_stack.route"  # where the Flask rule is kept in the WSGI environ
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, float("inf"))
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, float("inf"))
BATCH_WAIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, float("inf"))

_metrics = {}  # made once per process: prometheus-client allows one metric of a name


def _metric(kind, name: str, documentation: str, labels: list[str], **options):
    if name not in _metrics:
        _metrics[name] = kind(name, documentation, labels, **options)
    return _metrics[name]


class RequestMetrics:
    """WSGI middleware of each gunicorn worker: counts and times the app's answers."""

    def __init__(self, app, flask_app):
        self.app = app
        self.requests = _metric(Counter, "flask_stack_http_requests", "Requests answered by the app",
                                ["method", "route", "status"])
        self.duration = _metric(Histogram, "flask_stack_http_request_duration_seconds",
                                "Time the app took to answer", ["method", "route"], buckets=BUCKETS)
        self.failed = False
        if flask_app is not None:
            from flask import request, request_started  # noqa: PLC0415  (a Flask app only)

            def keep_route(sender, **extra):
                request.environ[ROUTE_KEY] = request.url_rule.rule if request.url_rule else "(no route)"
            self._keep_route = keep_route  # blinker holds its receivers weakly
            request_started.connect(keep_route, flask_app)

    def __call__(self, environ, start_response):
        started = time.perf_counter()
        status = ["none"]  # when the app never starts a response (a WebSocket takes the connection over)

        def start(status_line, headers, exc_info=None):
            status[0] = status_line.split(" ", 1)[0]
            return start_response(status_line, headers, exc_info)

        try:
            return self.app(environ, start)
        finally:
            self.count(environ, status[0], time.perf_counter() - started)

    def count(self, environ, status: str, seconds: float) -> None:
        method = environ.get("REQUEST_METHOD", "")
        method = method if method in METHODS else "OTHER"
        route = environ.get(ROUTE_KEY, "(any)")
        try:
            self.requests.labels(method, route, status).inc()
            self.duration.labels(method, route).observe(seconds)
        except Exception:
            if not self.failed:  # once: a full disk would otherwise log every request
                self.failed = True
                log.exception("could not count a request (the request itself was answered)")


def observe_batch(function: str, size: int, waits: list[float]) -> None:
    """A batch of a @batched function started (deploy/batching.py's observer, in each worker)."""
    try:
        _metric(Histogram, "flask_stack_batch_size", "Calls gathered into one batch of a @batched function",
                ["function"], buckets=BATCH_SIZE_BUCKETS).labels(function).observe(size)
        wait = _metric(Histogram, "flask_stack_batch_wait_seconds",
                       "Each call's wait from its arrival to its batch's start", ["function"],
                       buckets=BATCH_WAIT_BUCKETS).labels(function)
        for seconds in waits:
            wait.observe(seconds)
    except Exception:
        log.exception("could not count a batch (its calls were answered)")


def count_finished_job(task: str, status: str) -> None:
    """A job ended done, failed or interrupted (the consumer's side)."""
    try:
        _metric(Counter, "flask_stack_jobs_finished", "Jobs that ended, by task and status",
                ["task", "status"]).labels(task, status).inc()
    except Exception:
        log.exception("could not count a finished job")


class NginxCollector:
    """nginx's stub_status, read from its unix socket at each scrape."""

    def __init__(self, socket_path: str):
        self.socket_path = socket_path

    def status(self) -> str:
        connection = http.client.HTTPConnection("localhost", timeout=2)
        connection.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.sock.settimeout(2)
        try:
            connection.sock.connect(self.socket_path)
            connection.request("GET", "/stub_status")
            return connection.getresponse().read().decode()
        finally:
            connection.close()

    def collect(self):
        up = GaugeMetricFamily("nginx_up", "Whether nginx's status answered")
        try:
            words = self.status().split()
        except OSError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        # "Active connections: A server accepts handled requests X Y Z Reading: R Writing: W Waiting: V"
        active, accepted, handled, requests = int(words[2]), int(words[7]), int(words[8]), int(words[9])
        yield GaugeMetricFamily("nginx_connections_active", "Open client connections", value=active)
        for name, index in (("reading", 11), ("writing", 13), ("waiting", 15)):
            yield GaugeMetricFamily(f"nginx_connections_{name}", f"Client connections {name}",
                                    value=int(words[index]))
        yield CounterMetricFamily("nginx_connections_accepted", "Client connections accepted", value=accepted)
        yield CounterMetricFamily("nginx_connections_handled", "Client connections handled", value=handled)
        yield CounterMetricFamily("nginx_http_requests", "Client requests", value=requests)


class GunicornCollector:
    def __init__(self, arbiter):
        self.arbiter = arbiter

    def collect(self):
        yield GaugeMetricFamily("flask_stack_gunicorn_workers", "gunicorn's running workers",
                                value=len(self.arbiter.WORKERS))


class JobsCollector:
    """The job queue, as its store holds it: the same for every container that shares it."""

    def __init__(self, settings):
        self.settings = settings
        self._records = None
        self.seen = set()  # (status, task) seen before: back to 0, not gone, when no job is left

    def collect(self):
        up = GaugeMetricFamily("flask_stack_jobs_store_up", "Whether the job store answered")
        try:
            if self._records is None:
                from deploy.jobs.queue import JobQueue  # noqa: PLC0415  (huey, only when scraped)
                self._records = JobQueue(self.settings).records
            counts, oldest, now = self._records.live_counts(), self._records.oldest_queued(), self._records.now()
        except Exception as error:
            log.warning("the job store did not answer the metrics: %s", error)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        jobs = GaugeMetricFamily("flask_stack_jobs", "Jobs queued or running, by task", labels=["status", "task"])
        self.seen.update(counts)
        for status, task in sorted(self.seen):
            jobs.add_metric([status, task], counts.get((status, task), 0))
        yield jobs
        yield GaugeMetricFamily("flask_stack_jobs_oldest_queued_age_seconds",
                                "Seconds the oldest queued job has waited (0: none waits)",
                                value=max(0.0, now - oldest) if oldest is not None else 0.0)


def serve(settings, *collectors) -> None:
    """The exposition on METRICS_PORT, in a thread of this process: every process's counters
    (PROMETHEUS_MULTIPROC_DIR) and `collectors`."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    for collector in collectors:
        registry.register(collector)
    start_wsgi_server(settings.metrics_port, addr="0.0.0.0", registry=registry)
    log.info("metrics on port %d", settings.metrics_port)


def mark_process_dead(pid: int) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)
