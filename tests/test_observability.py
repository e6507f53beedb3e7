"""Logs where operators read them and metrics in a real Prometheus, from outside the container:
JSON logs that parse whatever a client sends, one request id from nginx to a job, every
access line of a burst whole on `docker logs`, and Prometheus' own queries."""

import json
import re
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.containers import JobsClient, docker, free_port, wait_for_line, wait_until
from tests.support import ISO_TIME, require_tool

REQUIRED = {"time", "level", "source", "message"}
ACCESS_FIELDS = {"method", "path", "status", "bytes", "duration", "client", "forwarded_for", "request_id"}
JSON_LOGS = {"nginx/access.log": "nginx.access", "gunicorn/access.log": "gunicorn.access",
             "gunicorn/error.log": "gunicorn.error", "app/app.log": "app", "jobs/consumer.log": "jobs"}

# Requests whose path, query and headers hold what must never break or forge a JSON line.
HOSTILE_REQUESTS = [
    b'GET /quote"and\\backslash?q=%22%5C%0A%00 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n',
    b"GET /%FF%FE?x=%C3%28 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b'GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: a"b\\c\x01\x1f\x7f\xff\xfe end\r\nConnection: close\r\n\r\n',
    b'GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.2.3.4", "source": "forged\r\nConnection: close\r\n\r\n',
    b"GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: \xe6\x97\xa5\xe6\x9c\xac ok\r\nConnection: close\r\n\r\n",
    "GET /raw-utf8-日本 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(),
]


def send_raw(port: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        while sock.recv(65536):
            pass


def json_lines(path) -> list[dict]:
    lines = path.read_bytes().decode("utf-8").splitlines()  # valid UTF-8, or this raises
    return [json.loads(line) for line in lines]


def test_json_logs_parse_whatever_the_client_sent_and_one_request_id_joins_them(containers, log_dir):
    container = containers.start(logs=log_dir, env={"LOG_FORMAT": "json"})
    for data in HOSTILE_REQUESTS:
        send_raw(container.port, data)
    response = container.request("/jobs", method="POST", headers={"Content-Type": "application/json"},
                                 body=json.dumps({"task": "job1", "args": {"seconds": 0}}).encode())
    rid, job = response.headers["X-Request-ID"], response.json()
    record = JobsClient.over_http(container.port).wait_for_status(job["id"], container=container)
    assert (record["status"], record["request_id"]) == ("done", rid)
    wait_for_line(log_dir / "jobs/consumer.log", f"{job['id']} executed")

    logs = {name: json_lines(log_dir / name) for name in JSON_LOGS}
    for name, lines in logs.items():
        assert lines, f"{name} is empty"
        for line in lines:
            assert REQUIRED <= set(line), f"{name}: {line}"
            assert ISO_TIME.fullmatch(line["time"]), f"{name}: {line['time']}"
            assert line["source"] == JSON_LOGS[name], f"{name}: {line}"
    for name in ("nginx/access.log", "gunicorn/access.log"):
        for line in logs[name]:
            assert ACCESS_FIELDS <= set(line), f"{name}: {line}"
    # One line per request: none split or added by the hostile bytes (the health checks' too).
    answered = [line for line in logs["nginx/access.log"]
                if line["path"] != "/healthz" and not line["path"].startswith("/jobs/")]
    assert len(answered) == len(HOSTILE_REQUESTS) + 1  # and POST /jobs
    forged = [line for line in logs["nginx/access.log"] + logs["gunicorn/access.log"] if line["source"] == "forged"]
    assert forged == []
    agents = [line["user_agent"] for line in logs["nginx/access.log"]]
    assert agents.count("(not UTF-8)") == 1  # bytes that are not UTF-8 cannot be a JSON string
    assert any(line["user_agent"] == "日本 ok" for line in logs["nginx/access.log"])

    def with_id(name):
        return [line for line in logs[name] if line.get("request_id") == rid]
    assert [line["path"] for line in with_id("nginx/access.log")] == ["/jobs"]
    assert [line["path"] for line in with_id("gunicorn/access.log")] == ["/jobs"]
    assert any(f"job {job['id']} queued" in line["message"] for line in with_id("app/app.log"))
    consumer = with_id("jobs/consumer.log")
    assert any(f"{job['id']} executed" in line["message"] and line["job_id"] == job["id"] for line in consumer)


def test_stdout_holds_every_access_line_of_a_burst_whole_and_the_log_folder_stays_empty(containers, log_dir):
    container = containers.start(logs=log_dir, env={"LOG_TARGET": "stdout", "LOG_FORMAT": "json"})
    count = 300
    marker = f"burst{time.monotonic_ns()}"
    with ThreadPoolExecutor(max_workers=64) as pool:
        statuses = list(pool.map(lambda i: container.get(f"/job1?seconds=0.2&{marker}={i}&pad={'x' * 1500}").status,
                                 range(count)))
    assert statuses == [200] * count

    def access_lines():
        lines = [line for line in container.logs().splitlines() if marker in line]
        return len(lines) == 2 * count and lines
    lines = wait_until(access_lines, 10, f"{2 * count} access lines of the burst on docker logs")
    parsed = [json.loads(line) for line in lines]  # each line whole: it parses
    for source in ("nginx.access", "gunicorn.access"):
        numbers = sorted(int(re.search(rf"{marker}=(\d+)", line["query"])[1])
                         for line in parsed if line["source"] == source)
        assert numbers == list(range(count)), source
    assert list(log_dir.iterdir()) == []
    logs = container.logs()
    assert re.search(r"^supervisord \S+ \S+ INFO spawned: 'nginx'", logs, re.M)  # its own lines, marked
    assert re.search(r"^nginx\.error \S+ \S+ \[notice\]", logs, re.M)


def test_both_writes_the_files_and_stdout(containers, log_dir):
    container = containers.start(logs=log_dir, env={"LOG_TARGET": "both"})
    rid = container.get("/?both").headers["X-Request-ID"]
    line = wait_for_line(log_dir / "nginx/access.log", rid)
    wait_until(lambda: f"nginx.access {line}" in container.logs(), 5, "nginx's line on docker logs, marked")
    app_line = wait_for_line(log_dir / "gunicorn/access.log", rid)
    wait_until(lambda: f"gunicorn.access {app_line}" in container.logs(), 5, "gunicorn's line on docker logs, marked")


@pytest.mark.parametrize("name, value, accepted", [
    ("LOG_TARGET", "syslog", "one of files, stdout, both"),
    ("LOG_FORMAT", "xml", "one of text, json"),
    ("METRICS_PORT", "80", "a port from 1 to 65535 other than 80"),
    ("METRICS_PORT", "abc", "a port from 1 to 65535 other than 80"),
])
def test_a_bad_log_or_metrics_variable_stops_the_container_naming_it(containers, name, value, accepted):
    container = containers.start(env={name: value}, wait=False)
    assert container.wait_for_exit(deadline=20) == 2
    assert f"configuration error: {name}='{value}' is not valid: expected {accepted}" in container.logs()


# --- Metrics, scraped by a real Prometheus server --------------------------------------------

@pytest.fixture
def prometheus(tmp_path):
    """Debian's Prometheus on a free loopback port; `scrape(port)` points it at a metrics port."""
    require_tool("prometheus", "prometheus")
    port, started = free_port(), []

    def scrape(target_port: int) -> str:
        config = tmp_path / "prometheus.yml"
        config.write_text("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                          "scrape_configs:\n  - job_name: stack\n"
                          f"    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n")
        log = open(tmp_path / "prometheus.log", "w")
        started.append(subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT))
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: urllib.request.urlopen(f"{url}/-/ready", timeout=2).status == 200, 30,
                   "Prometheus ready")
        return url

    yield scrape
    for process in started:
        process.terminate()
        process.wait(timeout=30)


def query(prometheus_url: str, promql: str) -> float | None:
    """The value of a PromQL query with one result (None if there is none)."""
    url = f"{prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    result = json.load(urllib.request.urlopen(url, timeout=5))["data"]["result"]
    assert len(result) <= 1, result
    return float(result[0]["value"][1]) if result else None


def metrics_port(container) -> int:
    return int(docker("port", container.id, "9100/tcp").stdout.split()[0].rsplit(":", 1)[1])


def test_prometheus_finds_the_requests_jobs_and_nginx_across_a_replaced_worker(containers, prometheus):
    container = containers.start("-p", "127.0.0.1::9100", env={"WEB_CONCURRENCY": "2", "JOB_WORKERS": "1"})
    url = prometheus(metrics_port(container))
    jobs = JobsClient.over_http(container.port)
    sent = {"/": 0, "/nope": 0}

    def send(path, times):
        with ThreadPoolExecutor(max_workers=8) as pool:
            assert all(status in (200, 404) for status in pool.map(lambda _: container.get(path).status, range(times)))
        sent[path] += times

    def prometheus_sees(promql, check):
        wait_until(lambda: (value := query(url, promql)) is not None and check(value), 30, f"Prometheus: {promql}")

    # One job runs for a while (JOB_WORKERS=1); two wait behind it.
    queued = [jobs.submit("job1", seconds=seconds)["id"] for seconds in (10, 0, 0)]
    prometheus_sees('flask_stack_jobs{status="running", task="job1"}', lambda value: value == 1)
    prometheus_sees('flask_stack_jobs{status="queued", task="job1"}', lambda value: value == 2)
    prometheus_sees("flask_stack_jobs_oldest_queued_age_seconds", lambda value: value > 0)

    send("/", 60)
    send("/nope", 7)
    gunicorn = container.exec("supervisorctl", "pid", "gunicorn").stdout.strip()

    def workers() -> list[str]:
        return container.exec("cat", f"/proc/{gunicorn}/task/{gunicorn}/children").stdout.split()
    killed = workers()[0]
    container.exec("sh", "-c", f"kill -9 {killed}")  # its counters must stay counted
    wait_until(lambda: killed not in workers() and len(workers()) == 2, 20, "gunicorn replacing the killed worker")
    send("/", 40)
    for job_id in queued:
        jobs.wait_for_status(job_id, {"done"}, container=container)

    prometheus_sees('sum(flask_stack_http_requests_total{route="/", method="GET", status="200"})',
                    lambda value: value == sent["/"])
    prometheus_sees('sum(flask_stack_http_requests_total{route="(no route)", status="404"})',
                    lambda value: value == sent["/nope"])
    prometheus_sees('sum(flask_stack_http_request_duration_seconds_count{route="/"})', lambda value: value == sent["/"])
    prometheus_sees('sum(flask_stack_http_requests_total{route="/jobs", method="POST", status="202"})',
                    lambda value: value == 3)
    prometheus_sees('sum(flask_stack_http_requests_total{route="/jobs/<job_id>", method="GET"})',
                    lambda value: value >= 3)
    prometheus_sees('flask_stack_jobs_finished_total{task="job1", status="done"}', lambda value: value == 3)
    prometheus_sees('flask_stack_jobs{status="queued", task="job1"}', lambda value: value == 0)
    prometheus_sees("flask_stack_gunicorn_workers", lambda value: value == 2)
    assert query(url, "flask_stack_jobs_store_up") == 1
    assert query(url, "nginx_up") == 1
    assert query(url, "nginx_http_requests_total") >= sum(sent.values()) + 3
    assert query(url, "nginx_connections_active") >= 1
    assert container.get("/metrics").status == 404  # never on the public port


# The README's alert: a scheduled task that has not succeeded for longer than it should.
NOT_SUCCEEDED_ALERT = ('time() - max by (task) (flask_stack_schedule_last_success_timestamp_seconds{{task="{task}"}})'
                       " > {seconds}")


def test_prometheus_alerts_on_a_scheduled_task_that_has_not_succeeded_in_time(ticking_image, containers, prometheus):
    container = containers.start("-p", "127.0.0.1::9100", image=ticking_image,
                                 env={"JOB_MODULES": "app,ticks.every_2s"})
    url = prometheus(metrics_port(container))
    wait_until(lambda: (runs := query(url, 'flask_stack_schedule_runs_total{task="every_2s"}')) and runs >= 2, 30,
               "every_2s run twice, as Prometheus sees it")
    wait_until(lambda: query(url, 'flask_stack_schedule_last_success_timestamp_seconds{task="every_2s"}'), 30,
               "every_2s's success")
    assert query(url, NOT_SUCCEEDED_ALERT.format(task="every_2s", seconds=60)) is None  # it succeeds: no alert
    # The example's nightly task has not run yet: its alert (a day and two hours) fires.
    assert query(url, NOT_SUCCEEDED_ALERT.format(task="nightly_report", seconds=26 * 3600)) > 26 * 3600
    assert query(url, 'flask_stack_schedule_missed_total{task="every_2s"}') == 0


def test_a_worker_only_container_serves_the_job_metrics(containers):
    container = containers.start("-p", "127.0.0.1::9100", env={"ROLE": "worker"}, wait=False)
    container.wait_until_healthy()

    def metrics_text():
        return urllib.request.urlopen(f"http://127.0.0.1:{metrics_port(container)}/metrics", timeout=2).read().decode()
    text = wait_until(metrics_text, 20, "the consumer's metrics answering", container=container)
    assert "flask_stack_jobs_store_up 1.0" in text
    assert "nginx_up" not in text


def test_metrics_port_0_serves_no_metrics(containers):
    container = containers.start("-p", "127.0.0.1::9100", env={"METRICS_PORT": "0"})
    assert 9100 not in {port for port, state in container.tcp_sockets() if state == "0A"}
