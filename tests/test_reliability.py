"""Proven under fire: the real container through reload, log rotation, kill -9, slow clients,
hostile input and 100k requests, each under a bounded load from a second process
(tests/load.py, loopback only). Each case adds a row to the figures table printed at the end
of the run (tests/figures.py)."""

import json
import re
import statistics
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import figures
from tests.containers import docker, serving_container, user_owned_folder, wait_until
from tests.load import in_second_process, slow_clients
from tests.support import raw_request, require_tool

pytestmark = [pytest.mark.slow]

LOAD_PATH = "/job1?seconds=0.1"  # each request waits inside gunicorn: there are always some in flight
RECOVERY_BOUND = 5.0  # seconds from a kill -9 to the last failed request
SLOW_CLIENTS = 300  # of each kind: slowloris and unread
SLOW_LATENCY_BOUND = 1.0  # seconds: the p99 of normal requests while the slow clients hold on
MEMORY_GROWTH_BOUND = 1.25  # RSS after 100k requests, at most this times its value after 10k


def load(port: int, seconds: float, path: str = LOAD_PATH, concurrency: int = 16):
    return in_second_process(port, seconds, path, concurrency)


def slow(port: int, mode: str, seconds: float):
    return slow_clients(port, mode, seconds, SLOW_CLIENTS, "/job2?arg1=" + "x" * 4000 + "&arg2=y&seconds=0")


@pytest.fixture(scope="module")
def stack_logs(tmp_path_factory):
    """The log folder of `stack`, owned by a user."""
    return user_owned_folder(tmp_path_factory.mktemp("stack") / "logs")


@pytest.fixture(scope="module")
def stack(image, stack_logs, request):
    """One container for the cases that leave it serving. JOB_MAX_SECONDS=1 bounds the
    waits a fuzzed `seconds` can ask for."""
    yield from serving_container(image, request, env={"JOB_MAX_SECONDS": "1"}, logs=stack_logs)


# --- 1, 2: reload, and workers recycled ------------------------------------------------------

@pytest.mark.parametrize("target, program", [("app", "gunicorn"), ("nginx", "nginx")])
def test_reload_under_load_fails_no_request(stack, target, program):
    workers = stack.children(stack.pid_of(program))
    with load(stack.port, seconds=10) as result:
        time.sleep(3)
        reload = stack.exec("reload", target)
    assert not result.failures, f"reload {target}: {result.summary()}; failed: {result.failures[:5]}"
    assert "signalled" in reload.stdout
    # Every old worker was replaced: new code and config are in use.
    assert not stack.children(stack.pid_of(program)) & workers
    figures.record(f"reload {target} (`docker exec <c> reload {target}`), 10 s", result.sent,
                   len(result.failures), "old workers finished their requests, new ones took over")


def test_reload_app_serves_new_code(stack):
    index = "/srv/app/index.py"
    stack.exec("cp", index, "/tmp/index.py.good")
    try:
        stack.exec("sed", "-i", 's/service="flask-stack example"/service="new code"/', index)
        stack.exec("reload", "app")
        wait_until(lambda: stack.get("/").json()["service"] == "new code", 10, "the new code serving")
    finally:
        stack.exec("cp", "/tmp/index.py.good", index)
        stack.exec("reload", "app")
    wait_until(lambda: stack.get("/").json()["service"] == "flask-stack example", 10, "the old code back")


def test_a_graceful_restart_of_gunicorn_keeps_its_socket_and_fails_no_request(stack):
    """`supervisorctl restart gunicorn` (what `reload app` does with PRELOAD_APP): the old master
    stops gracefully without removing the socket's path, which is supervisord's, so nginx's
    requests wait in its backlog for the new master and are served."""
    master = stack.pid_of("gunicorn")
    with load(stack.port, seconds=10) as result:
        time.sleep(3)
        stack.exec("supervisorctl", "restart", "gunicorn")
    assert not result.failures, f"restart: {result.summary()}; failed: {result.failures[:5]}"
    assert stack.pid_of("gunicorn") != master
    assert stack.get("/").status == 200
    figures.record("restart gunicorn (`supervisorctl restart gunicorn`), 10 s", result.sent, 0,
                   f"requests waited for the new master, the longest {max(result.latencies()):.2f} s")


def test_reload_refuses_a_broken_nginx_config_and_keeps_serving(stack):
    broken = "/etc/nginx/server.d/broken.conf"  # an include of the app's, as a user would add one
    try:
        stack.exec("sh", "-c", f"echo 'this is not nginx syntax;' > {broken}")
        reload = stack.exec("reload", "nginx", check=False)
    finally:
        stack.exec("rm", "-f", broken)
    assert reload.returncode == 1
    assert "nginx keeps the one it has" in reload.stderr
    assert stack.get("/healthz").status == 200


WORKER_EVENT = re.compile(r"^\S+ \[(?P<pid>\d+)\] .*?(?:(?P<recycling>Autorestarting worker)"
                          r"|Booting worker with pid: (?P<booted>\d+)|Worker exiting \(pid: (?P<exited>\d+)\))")


def worker_events(error_log: str) -> list[tuple[str, int]]:
    """gunicorn's lines about its workers, in order: ("recycling" | "booted" | "exited", pid)."""
    events = []
    for line in error_log.splitlines():
        if match := WORKER_EVENT.match(line):
            if match["recycling"]:
                events.append(("recycling", int(match["pid"])))
            else:
                kind = "booted" if match["booted"] else "exited"
                events.append((kind, int(match[kind])))
    return events


@pytest.mark.parametrize("web_concurrency", ["1", "2"])
def test_recycled_workers_are_replaced_before_they_exit_and_fail_no_request(containers, log_dir, web_concurrency):
    """MAX_REQUESTS=100 under load: a worker is replaced every second or so. Each one's
    replacement boots while it finishes its requests, not after (with one worker, nothing
    would accept meanwhile), and then the master runs WEB_CONCURRENCY workers again."""
    container = containers.start(env={"MAX_REQUESTS": "100", "WEB_CONCURRENCY": web_concurrency}, logs=log_dir)
    with load(container.port, seconds=8) as result:
        pass
    assert not result.failures, f"recycling: {result.summary()}; failed: {result.failures[:5]}"
    gunicorn, workers = container.pid_of("gunicorn"), int(web_concurrency)
    wait_until(lambda: len(container.children(gunicorn)) == workers, 5, f"{workers} workers again")

    events = worker_events((log_dir / "gunicorn/error.log").read_text())
    recycled = [pid for kind, pid in events if kind == "recycling" and ("exited", pid) in events]
    assert len(recycled) >= 3, f"only {len(recycled)} workers recycled: {events}"
    for pid in recycled:
        asked, exited = events.index(("recycling", pid)), events.index(("exited", pid))
        assert any(kind == "booted" for kind, _ in events[asked:exited]), \
            f"worker {pid}: no replacement booted between its last request and its exit: {events}"
    figures.record(f"workers recycled (`MAX_REQUESTS=100`, `WEB_CONCURRENCY={web_concurrency}`), 8 s",
                   result.sent, len(result.failures),
                   f"{len(recycled)} workers replaced, each replacement booted before the old one exited")


# --- 3: log rotation -------------------------------------------------------------------------

def lines_with(folder: Path, marker: str) -> dict[str, int]:
    """The lines holding `marker` in each access log file of `folder`: current and rotated."""
    return {path.name: path.read_text(errors="replace").count(marker)
            for path in sorted(folder.glob("access.log*"))}


def test_rotation_under_load_loses_no_line(stack, stack_logs):
    marker = "case=rotation"
    with load(stack.port, seconds=6, path=f"{LOAD_PATH}&{marker}") as result:
        for _ in range(2):
            time.sleep(2)
            stack.exec("rotate-logs")
    assert not result.failures, result.summary()
    for program in ("nginx", "gunicorn"):
        def every_line(folder: Path = stack_logs / program) -> dict[str, int] | bool:
            counts = lines_with(folder, marker)  # gunicorn writes its access line after the response
            return sum(counts.values()) >= result.sent and counts
        counts = wait_until(every_line, 10, f"{program}: a line for each request")
        assert sum(counts.values()) == result.sent, f"{program}: {counts}, {result.sent} requests sent"
        # Written before, between and after the two rotations: three files hold lines.
        assert all(counts.get(name) for name in ("access.log", "access.log.1", "access.log.2")), counts
    owner = stack_logs.stat().st_uid
    assert {path.stat().st_uid for path in stack_logs.rglob("*")} == {owner}
    figures.record("rotate the logs twice (`docker exec <c> rotate-logs`), 6 s", result.sent,
                   len(result.failures), "access lines, old + new files: nginx and gunicorn "
                   f"{result.sent} each = requests sent")


def test_logs_rotate_by_size_and_keep_the_count(containers, log_dir):
    container = containers.start(env={"LOG_ROTATE_SIZE": "2k", "LOG_ROTATE_KEEP": "2"}, logs=log_dir)
    access_log = log_dir / "nginx/access.log"
    for _ in range(20):  # about 4 KB of nginx's access log
        container.get("/healthz")
    # supervisord's program `logrotate` checks the sizes every 10 s.
    wait_until((log_dir / "nginx/access.log.1").exists, 25, "access.log.1 by size")
    for _ in range(3):
        container.get("/healthz")
        wait_until(lambda: access_log.exists() and access_log.stat().st_size, 5, "a line in access.log")
        container.exec("rotate-logs")
    # LOG_ROTATE_KEEP=2: the oldest went; nginx reopened a new access.log.
    wait_until(lambda: sorted(path.name for path in (log_dir / "nginx").glob("access.log*")) ==
               ["access.log", "access.log.1", "access.log.2"], 5, "access.log, .1 and .2 only")


# --- 4: kill -9 ------------------------------------------------------------------------------

def replaced(stack, victim: str, pid: int, workers: int) -> bool:
    """Whether a new process stands where the killed `pid` was (gunicorn has `workers` again)."""
    if victim == "gunicorn worker":
        now = stack.children(stack.pid_of("gunicorn"))
        return pid not in now and len(now) == workers
    return stack.pid_of(victim) not in (0, pid)


def leftovers_killed(victim: str, pid: int) -> str:
    """supervisord's line when it killed the orphans of a master that died (deploy/supervisor_container.py)."""
    return f"killed what was left of {victim}'s process group {pid}"


def kill_evidence(stack, stack_logs: Path, victim: str, pid: int) -> str:
    """What the logs say about the kill: asserted, then named in the figures table."""
    if victim == "gunicorn worker":
        log, lines = "gunicorn/error.log", [f"Worker (pid:{pid}) was sent SIGKILL"]
    else:
        log = "supervisord.log"
        lines = [f"exited: {victim} (terminated by SIGKILL",
                 f"spawned: '{victim}' with pid {stack.pid_of(victim)}"]
        if victim != "jobs":  # a master: its orphaned workers were killed too
            lines.append(leftovers_killed(victim, pid))
    text = (stack_logs / log).read_text()
    missing = [line for line in lines if line not in text]
    assert not missing, f"{log} does not say {missing}:\n{text[-2000:]}"
    return f"{log}: " + ", ".join(f'"{line}"' for line in lines)


def leftovers_killed_at(stack_logs: Path, victim: str, pid: int) -> float | None:
    """When supervisord killed what was left of the killed master's process group, on this
    process's time.monotonic() clock (its log's time is UTC, to the millisecond); None if it
    found nothing left."""
    line = next((line for line in (stack_logs / "supervisord.log").read_text().splitlines()
                 if leftovers_killed(victim, pid) in line), None)
    if line is None:
        return None
    logged = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=UTC).timestamp()
    return logged - (time.time() - time.monotonic())


@pytest.mark.parametrize("victim", ["nginx", "gunicorn", "gunicorn worker", "jobs"])
def test_kill_9_under_load_is_recovered(stack, stack_logs, victim):
    """Back within RECOVERY_BOUND: the last failed request has ended and the replacement runs."""
    workers = stack.children(stack.pid_of("gunicorn"))
    pid = min(workers) if victim == "gunicorn worker" else stack.pid_of(victim)
    with load(stack.port, seconds=7) as result:
        time.sleep(2)
        killed_at = time.monotonic()
        stack.exec("sh", "-c", f"kill -9 {pid}")  # the shell's kill: the image has no procps
        kill_done = time.monotonic()
        wait_until(lambda: replaced(stack, victim, pid, len(workers)), RECOVERY_BOUND, f"a new {victim}")
        replaced_at = time.monotonic()
    failures = result.failures
    recovery = max([replaced_at, *(end for _, end, _ in failures)]) - killed_at
    assert recovery <= RECOVERY_BOUND, f"{victim}: failures for {recovery:.1f} s; {result.summary()}"
    assert all(start >= killed_at - 1 for start, _, _ in failures), f"{victim}: failures before the kill"
    assert any(status == 200 and start > killed_at + recovery for start, _, status in result.rows), \
        f"{victim}: no request succeeded after the recovery: {result.summary()}"
    # Only requests that the killed processes held may fail: those in flight while the kill was
    # sent, and those a killed master's orphaned workers took before supervisord removed them
    # (nginx's accept until then). The rest wait for the replacement (gunicorn's socket is
    # supervisord's; other gunicorn workers serve on).
    gone_at = max(kill_done, leftovers_killed_at(stack_logs, victim, pid) or 0)
    in_flight = sum(start <= gone_at and end >= killed_at for start, end, _ in result.rows)
    assert len(failures) <= in_flight, f"{victim}: {result.summary()}, {in_flight} in flight"
    if victim == "jobs":
        assert not failures, f"the job consumer is not on the request path: {result.summary()}"
    held = kill_evidence(stack, stack_logs, victim, pid)
    figures.record(f"kill -9 {victim}, 7 s", result.sent, len(failures), held, recovery)


# --- 5: slow clients -------------------------------------------------------------------------

def test_slow_clients_do_not_slow_down_normal_requests(stack):
    with load(stack.port, seconds=3, path="/healthz", concurrency=4) as alone:
        pass
    with slow(stack.port, "slowloris", seconds=9), slow(stack.port, "unread", seconds=9):
        time.sleep(3)  # every slow connection is open and dripping
        with load(stack.port, seconds=4, path="/healthz", concurrency=4) as result:
            held = sum(port == 80 and state == "01" for port, state in stack.tcp_sockets())  # ESTABLISHED
    assert held >= 2 * SLOW_CLIENTS, f"nginx held {held} connections, not the {2 * SLOW_CLIENTS} slow ones"
    assert not result.failures, result.summary()
    p99 = statistics.quantiles(result.latencies(), n=100)[98]
    before = statistics.quantiles(alone.latencies(), n=100)[98]
    assert p99 < SLOW_LATENCY_BOUND, f"p99 {p99 * 1000:.0f} ms with slow clients (alone: {before * 1000:.0f} ms)"
    figures.record(f"{SLOW_CLIENTS} slowloris + {SLOW_CLIENTS} unread connections, 4 s", result.sent,
                   len(result.failures), f"{held} connections held open; p99 latency {p99 * 1000:.0f} ms "
                   f"(without them {before * 1000:.0f} ms)")


# --- 6: hostile input ------------------------------------------------------------------------

H = b"Host: localhost\r\nConnection: close\r\n"
JSON_POST = b"POST /jobs HTTP/1.1\r\n" + H + b"Content-Type: application/json\r\n"


def request(target: bytes, headers: bytes = b"", method: bytes = b"GET", version: bytes = b"HTTP/1.1") -> bytes:
    """A request for `target` with the usual headers (H) and `headers`, without a body."""
    return method + b" " + target + b" " + version + b"\r\n" + H + headers + b"\r\n"


# name, raw request, expected status: every answer is JSON, nginx's, gunicorn's or the app's
HOSTILE = [
    ("body larger than CLIENT_MAX_BODY_SIZE", JSON_POST + b"Content-Length: 20000000\r\n\r\n" + b"x" * 1000, 413),
    ("Expect: 100-continue with a huge body", JSON_POST + b"Expect: 100-continue\r\nContent-Length: 99999999\r\n\r\n", 413),
    ("one 10 KB header", request(b"/healthz", b"X-Big: " + b"a" * 10_000 + b"\r\n"), 400),
    ("42 KB of headers", request(b"/healthz", b"".join(b"X-H%d: %s\r\n" % (i, b"a" * 7000) for i in range(6))), 400),
    ("10 KB URI", request(b"/healthz?" + b"a" * 10_000), 414),
    ("6 KB request line (over gunicorn's own 4 KB limit, under nginx's 8 KB)", request(b"/job2?arg1=" + b"a" * 6000 + b"&arg2=b&seconds=0"), 200),
    ("request line without a method", b"/healthz HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("lower-case method", request(b"/healthz", method=b"get"), 400),
    ("binary garbage", b"\x01\x02\x03garbage\r\n\r\n", 400),
    ("HTTP/2.0 spoken as text", request(b"/healthz", version=b"HTTP/2.0"), 400),
    ("bad percent-encoding in the path", request(b"/%zz"), 400),
    ("bad percent-encoding in the query", request(b"/job2?arg1=%zz&arg2=%&seconds=0"), 200),
    ("path traversal", request(b"/../../etc/passwd"), 400),
    ("encoded path traversal", request(b"/%2e%2e/%2e%2e/etc/passwd"), 400),
    ("traversal with encoded slashes", request(b"/healthz/..%2f..%2fetc%2fpasswd"), 400),
    ("POST to a GET endpoint", request(b"/healthz", b"Content-Length: 0\r\n", method=b"POST"), 405),
    ("unknown method", request(b"/healthz", method=b"FOO"), 405),
    ("TRACE", request(b"/", method=b"TRACE"), 405),
    ("non-JSON body where JSON is expected", JSON_POST + b"Content-Length: 9\r\n\r\nnot json{", 400),
    ("JSON array where an object is expected", JSON_POST + b"Content-Length: 2\r\n\r\n[]", 400),
    ("unicode, percent-encoded", request(b"/job2?arg1=%E6%97%A5&arg2=%F0%9F%98%80&seconds=0"), 200),
    ("raw UTF-8 bytes in the request line", request("/job2?arg1=日本&arg2=b".encode()), 400),
    ("a control byte in the request target", request(b"/job2?arg1=a\x01b&arg2=b"), 400),
    ("a control byte in a header value", request(b"/", b"X-A: a\x01b\r\n"), 400),
    ("DEL in a header value", request(b"/", b"User-Agent: a\x7fb\r\n"), 400),
    ("101 headers (over gunicorn's own 100)", request(b"/", b"".join(b"X-H%d: v\r\n" % i for i in range(101))), 200),
    ("a two-letter method", request(b"/", method=b"AB"), 405),
    ("an absolute-form request target", request(b"http://localhost/"), 200),
    ("invalid UTF-8, percent-encoded", request(b"/job2?arg1=%FF%FE&arg2=b&seconds=0"), 200),
    ("NUL in the query, encoded", request(b"/job2?arg1=%00&arg2=b&seconds=0"), 200),
    ("NUL in the path, encoded", request(b"/healthz%00"), 400),
    ("NUL byte in the request line", request(b"/heal\x00thz"), 400),
    ("NUL byte in a header", request(b"/healthz", b"X-A: a\x00b\r\n"), 400),
    ("negative seconds", request(b"/job1?seconds=-1"), 400),
    ("non-numeric seconds", request(b"/job1?seconds=abc"), 400),
    ("infinite seconds", request(b"/job1?seconds=1e999"), 400),
    ("NaN seconds", request(b"/job?seconds=nan"), 400),
    ("Content-Length and Transfer-Encoding (smuggling)", JSON_POST + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("unknown Transfer-Encoding", JSON_POST + b"Transfer-Encoding: gzip\r\n\r\n", 400),
    ("malformed chunked body", JSON_POST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400),
    ("negative Content-Length", JSON_POST + b"Content-Length: -5\r\n\r\n", 400),
    ("HTTP/1.1 without Host", b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n", 400),
    ("two Host headers", b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n", 400),
    ("folded header (obs-fold)", request(b"/healthz", b"X-A: a\r\n  folded\r\n"), 400),
    ("forged X-Forwarded-For garbage", request(b"/ip", b"X-Forwarded-For: <script>, ;;, 999.1.1.1\r\n"), 200),
]


def is_json(content_type: str, body: bytes) -> bool:
    try:
        json.loads(body)
    except ValueError:
        return False
    return content_type == "application/json"


def test_hostile_input_gets_its_json_answer_never_a_5xx(stack):
    assert len(HOSTILE) >= 25
    wrong = []
    for name, data, expected in HOSTILE:
        status, headers, body = raw_request(stack.port, data)
        marked = headers.get("X-Content-Type-Options") == "nosniff" and re.fullmatch(r"[0-9a-f]{32}",
                                                                                       headers.get("X-Request-ID", ""))
        if (status, is_json(headers.get("Content-Type", ""), body), bool(marked)) != (expected, True, True):
            wrong.append(f"{name}: {status} {dict(headers)} {body[:100]!r}, expected {expected}, JSON, headers")
    assert not wrong, "\n".join(wrong)
    assert stack.get("/healthz").status == 200
    figures.record(f"hostile input: {len(HOSTILE)} cases", len(HOSTILE), len(wrong),
                   "each its expected 4xx (or 200), JSON with X-Request-ID and nosniff, never a 5xx "
                   "or a gunicorn page")


FUZZED = {"requests": 0}
# The example API's routes and arguments; the rest of each request is drawn at random.
ROUTES = ["/healthz", "/job1", "/job2", "/job", "/ip", "/jobs", "/jobs/0", "/"]
ARGUMENTS = ["arg1", "arg2", "seconds", "task", "x"]


@given(
    method=st.one_of(st.just("GET"), st.sampled_from(["POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])),
    path=st.one_of(st.sampled_from(ROUTES), st.text(max_size=30).map(lambda text: "/" + quote(text))),
    query=st.dictionaries(st.one_of(st.sampled_from(ARGUMENTS), st.text(max_size=10)),
                          st.one_of(st.floats(allow_nan=True).map(str), st.text(max_size=50)), max_size=4),
    headers=st.dictionaries(st.from_regex(r"X-[A-Za-z0-9-]{1,20}", fullmatch=True),
                            st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=100), max_size=4),
    body=st.one_of(st.none(), st.binary(max_size=300), st.text(max_size=200).map(str.encode)),
)
@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
def fuzz_the_api(port, method, path, query, headers, body):
    target = path + ("?" + urlencode(query) if query else "")
    head = b"".join(f"{name}: {value}\r\n".encode() for name, value in headers.items())
    if body is not None:
        head += b"Content-Length: %d\r\n" % len(body)
    data = request(target.encode(), head, method.encode()) + (body or b"")
    FUZZED["requests"] += 1
    status, _, response = raw_request(port, data)
    assert status < 500, f"{status} for {data[:300]!r}: {response[:300]!r}"


def test_fuzzing_the_api_finds_no_server_error(stack):
    fuzz_the_api(stack.port)
    assert stack.get("/healthz").status == 200
    figures.record("fuzzing (hypothesis: methods, paths, queries, headers, bodies)", FUZZED["requests"], 0,
                   "no 5xx")


# --- 7: memory -------------------------------------------------------------------------------

def container_rss_mib(container) -> float:
    """The resident memory of every process in the container, summed (the probing shell left out)."""
    status = container.exec("sh", "-c", 'for p in /proc/[0-9]*; do [ "${p#/proc/}" = $$ ] || cat $p/status; done',
                            check=False).stdout
    return sum(int(kib) for kib in re.findall(r"^VmRSS:\s+(\d+) kB", status, re.M)) / 1024


def hammer(port: int, requests: int) -> int:
    """`ab`: `requests` requests, 32 at a time on keep-alive connections, within 400 s (a
    guard against a hang, not a speed target). Returns the failed ones."""
    require_tool("ab", "apache2-utils")
    output = subprocess.run(
        ["ab", "-q", "-k", "-c", "32", "-t", "400", "-n", str(requests),
         f"http://127.0.0.1:{port}/job2?arg1=a&arg2=b&seconds=0"],
        capture_output=True, text=True, timeout=450, check=True).stdout
    complete = int(re.search(r"Complete requests:\s+(\d+)", output)[1])
    assert complete == requests, f"ab sent {complete} of {requests} requests in 400 s:\n{output}"
    failed = re.search(r"Non-2xx responses:\s+(\d+)", output)
    return int(re.search(r"Failed requests:\s+(\d+)", output)[1]) + (int(failed[1]) if failed else 0)


def test_memory_after_100k_requests_stays_near_its_value_after_10k(containers):
    container = containers.start()
    failed = hammer(container.port, 10_000)
    after_10k = container_rss_mib(container)
    failed += hammer(container.port, 90_000)
    after_100k = container_rss_mib(container)
    assert failed == 0
    assert after_100k <= after_10k * MEMORY_GROWTH_BOUND, \
        f"RSS {after_10k:.0f} MiB after 10k requests, {after_100k:.0f} MiB after 100k"
    figures.record("memory: 100k requests (ab, 32 at a time)", 100_000, failed,
                   f"RSS of the container {after_10k:.0f} MiB after 10k, {after_100k:.0f} MiB after 100k "
                   f"(bound: x{MEMORY_GROWTH_BOUND})")


# --- 8: one client cannot hold the door; wrong hosts; a clean stop ---------------------------

def answer_is_json_and_marked(response) -> bool:
    return (response.headers.get("Content-Type") == "application/json" and "error" in response.json()
            and response.headers.get("X-Content-Type-Options") == "nosniff" and "X-Request-ID" in response.headers)


def test_one_client_past_its_share_of_connections_is_refused_while_others_are_served(containers):
    # The test is every client's peer (Docker's proxy): trusted, it names the clients in
    # X-Forwarded-For, as a load balancer does. 203.0.113.1 asks for more than its share.
    peer = containers.start().get("/ip").json()["client_ip"]
    limit = 20
    container = containers.start(env={"TRUSTED_PROXIES": peer, "CLIENT_MAX_CONNECTIONS": str(limit)})

    def slow_request(client: str):
        return container.get("/job1?seconds=3", headers={"X-Forwarded-For": client}, timeout=30)

    with ThreadPoolExecutor(max_workers=limit + 10) as pool:
        hog = [pool.submit(slow_request, "203.0.113.1") for _ in range(limit + 10)]
        time.sleep(1)  # the hog's requests are in progress
        others = [container.get("/", headers={"X-Forwarded-For": f"203.0.113.{n}"}) for n in range(2, 12)]
        answers = [future.result() for future in hog]
    statuses = Counter(answer.status for answer in answers)
    assert statuses == {200: limit, 429: 10}, statuses
    refused = next(answer for answer in answers if answer.status == 429)
    assert answer_is_json_and_marked(refused) and refused.headers["Retry-After"] == "1"
    assert [other.status for other in others] == [200] * 10
    figures.record(f"one client past CLIENT_MAX_CONNECTIONS={limit} (through a trusted proxy)", len(answers) + 10,
                   0, f"{statuses[200]} of its requests served, {statuses[429]} refused with a JSON 429 "
                   f"(Retry-After); 10 other clients served meanwhile")


def test_a_client_past_its_request_rate_is_refused_and_others_are_not(containers):
    peer = containers.start().get("/ip").json()["client_ip"]
    container = containers.start(env={"TRUSTED_PROXIES": peer, "CLIENT_RATE_LIMIT": "5/s"})
    with ThreadPoolExecutor(max_workers=40) as pool:
        fast = Counter(pool.map(lambda _: container.get("/", headers={"X-Forwarded-For": "203.0.113.1"}).status,
                                range(40)))
    other = container.get("/", headers={"X-Forwarded-For": "203.0.113.2"})
    assert fast[429] >= 20 and fast[200] >= 5, fast
    assert other.status == 200
    figures.record("one client past CLIENT_RATE_LIMIT=5/s (40 requests at once)", 41, 0,
                   f"{fast[200]} served, {fast[429]} refused with a JSON 429; another client served")


def test_a_host_outside_allowed_hosts_is_refused_by_nginx_and_health_still_answers(containers, log_dir):
    container = containers.start(logs=log_dir, env={"ALLOWED_HOSTS": "api.example.com,*.example.org"})
    served = {host: container.get("/", headers={"Host": host}).status
              for host in ("api.example.com", "API.example.com:8080", "a.b.example.org")}
    assert served == dict.fromkeys(served, 200)
    evil = container.get("/ip", headers={"Host": "evil.example.net"})
    assert evil.status == 400 and answer_is_json_and_marked(evil)
    assert evil.json()["message"] == "this service does not answer for this host"
    assert container.get("/ip", headers={"Host": "example.org"}).status == 400  # *.example.org: subdomains only
    assert container.get("/healthz", headers={"Host": "10.1.2.3"}).status == 200  # an orchestrator's probe
    assert container.get("/readyz", headers={"Host": "10.1.2.3"}).status == 200
    assert "/ip" not in (log_dir / "gunicorn/access.log").read_text()  # the refused one never reached the app
    assert "ALLOWED_HOSTS is not set" not in container.logs()
    figures.record("wrong Host (ALLOWED_HOSTS=api.example.com,*.example.org)", 7, 0,
                   "the allowed names served; another host a JSON 400 from nginx, never reaching the app; "
                   "/healthz and /readyz for any host")


def test_every_kind_of_answer_carries_the_request_id_and_nosniff(containers):
    container = containers.start(env={"CLIENT_MAX_BODY_SIZE": "1k"})
    answers = {
        "the app": container.get("/"),
        "the app's error": container.get("/nope"),
        "health": container.get("/healthz"),
        "nginx's refusal": container.get("/", method="POST", body=b"x" * 4096),
        "nginx's refusal of the target": raw_answer(container.port, request("/日本".encode())),
        "gunicorn's refusal": raw_answer(container.port, request(b"/", b"X-A: \x01\r\n")),
    }
    unmarked = {kind: dict(answer.headers) for kind, answer in answers.items()
                if answer.headers.get("X-Content-Type-Options") != "nosniff"
                or not re.fullmatch(r"[0-9a-f]{32}", answer.headers.get("X-Request-ID", ""))}
    assert unmarked == {}
    assert answers["the app"].headers.get_all("X-Content-Type-Options") == ["nosniff"]  # once, not twice


def raw_answer(port: int, data: bytes):
    status, headers, body = raw_request(port, data)
    return SimpleNamespace(status=status, headers=headers, body=body)


def test_docker_stop_and_restart_leave_no_traceback_and_no_crit_line(containers, log_dir):
    container = containers.start(logs=log_dir)
    assert container.get("/").status == 200
    container.restart()
    assert container.get("/").status == 200
    docker("stop", container.id, timeout=60)
    assert container.state()["ExitCode"] == 0
    output = container.logs() + (log_dir / "supervisord.log").read_text()
    for alarm in ("Traceback", "CRIT", "Error", "ImportError"):
        assert alarm not in output, f"{alarm} in the output of docker stop / restart:\n{output}"
    figures.record("docker restart, then docker stop", 1, 0,
                   "exit status 0; no traceback, no CRIT line in docker logs or supervisord.log")


def test_slowhttptest_cannot_starve_normal_clients(stack):
    # A real attack tool: slowloris (headers never finished) at 200 new connections a second.
    require_tool("slowhttptest", "slowhttptest")
    attack = subprocess.Popen(["slowhttptest", "-H", "-c", "2000", "-r", "200", "-i", "5", "-l", "15",
                               "-u", f"http://127.0.0.1:{stack.port}/", "-p", "3", "-o", "/dev/null"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(5)  # up to 1000 slow connections open
        held = sum(port == 80 and state == "01" for port, state in stack.tcp_sockets())
        with load(stack.port, seconds=6, path="/", concurrency=4) as result:
            pass
    finally:
        attack.terminate()
        attack.wait(timeout=30)
    assert held >= 300, f"the attack held only {held} connections"
    assert not result.failures, result.summary()
    p99 = statistics.quantiles(result.latencies(), n=100)[98]
    assert p99 < SLOW_LATENCY_BOUND
    figures.record("slowhttptest slowloris, 200 new connections/s for 15 s", result.sent, 0,
                   f"{held} slow connections held; normal clients' p99 {p99 * 1000:.0f} ms")
