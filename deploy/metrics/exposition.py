"""The exposition of the metrics, in the one process that serves them (the gunicorn master,
or the consumer of a worker-only container): every process's counters (prometheus-client's
multiprocess mode), nginx's stub_status and gunicorn's workers, on METRICS_PORT."""

import http.client
import logging
import os
import socket

from prometheus_client import CollectorRegistry, multiprocess, start_wsgi_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

log = logging.getLogger("deploy.metrics")


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
