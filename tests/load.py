"""The tests' one load harness: bounded HTTP clients against 127.0.0.1 only (a container's
published port). Every load stops by itself after its seconds, its count, or when told.

- In the test's process: `clients(port, groups, ...)` runs groups of clients in threads, each
  sending GET on a new connection after the previous answer, at most one every `interval`
  seconds (so that a server that fails fast is not flooded: the offered load stays the same),
  and returns every Answer. `Load` does it in the background while a block runs.
- In a second process, for the reliability suite (the test process's own work then cannot
  slow the clients): `python -m tests.load MODE ...`
  - `requests`: --concurrency clients of --path; prints one JSON line, a [start, end, status
    or error] row per request, times on the machine's monotonic clock (the same in every
    process);
  - `slowloris`: --connections that send a request's headers one byte at a time;
  - `unread`: --connections that send a request and never read the answer.
"""

import argparse
import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # `python -m tests.load` runs from the checkout's root

HOST = "127.0.0.1"
REQUEST_TIMEOUT = 10


@dataclass
class Answer:
    start: float  # the monotonic clock
    end: float
    path: str
    status: int | str  # the HTTP status, or the exception's name
    body: bytes = b""


@dataclass(frozen=True)
class Clients:
    """`count` clients sending GET `path`, at most one request every `interval` seconds each."""
    path: str
    count: int
    interval: float = 0.0


def clients(port: int, groups: list[Clients], seconds: float, max_requests: int = 100_000,
            stopping: threading.Event | None = None, timeout: float = REQUEST_TIMEOUT) -> list[Answer]:
    """Run the groups of clients until `seconds` have passed, `max_requests` were sent, or
    `stopping` is set; every answer, in the order they were started."""
    deadline = time.monotonic() + seconds
    stopping = stopping or threading.Event()
    answers, lock = [], threading.Lock()

    def client(path: str, interval: float) -> None:
        while not stopping.is_set() and time.monotonic() < deadline:
            with lock:
                if len(answers) >= max_requests:
                    return
                answer = Answer(time.monotonic(), 0.0, path, "none")
                answers.append(answer)
            connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
            try:
                connection.request("GET", path)
                response = connection.getresponse()
                answer.body = response.read()
                answer.status = response.status
            except (OSError, http.client.HTTPException) as error:
                answer.status = type(error).__name__
            finally:
                connection.close()
                answer.end = time.monotonic()
            time.sleep(max(0.0, answer.start + interval - time.monotonic()))

    threads = [threading.Thread(target=client, args=(group.path, group.interval))
               for group in groups for _ in range(group.count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


@dataclass
class Load:
    """`clients(...)` in the background: start it, run the block, `stop()` it; then its answers."""
    port: int
    groups: list[Clients]
    seconds: float
    max_requests: int = 100_000
    answers: list[Answer] = field(default_factory=list)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> "Load":
        def run():
            self.answers.extend(clients(self.port, self.groups, self.seconds, self.max_requests, self._stopping))
        self._thread = threading.Thread(target=run)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stopping.set()
        self._thread.join(timeout=REQUEST_TIMEOUT + 5)

    @property
    def failures(self) -> list[Answer]:
        return [answer for answer in self.answers if answer.status != 200]

    def statuses(self) -> Counter:
        return Counter(answer.status for answer in self.answers)


def hold_connections(port: int, connections: int, seconds: float, drip: bool, path: str) -> None:
    """Open the connections, then drip each request's bytes (slowloris) or send it whole and
    never read; close them all after `seconds`."""
    request = f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: slow-client\r\n\r\n".encode()
    deadline = time.monotonic() + seconds
    sockets = []
    for _ in range(connections):
        sock = socket.create_connection((HOST, port), timeout=REQUEST_TIMEOUT)
        if not drip:
            sock.sendall(request)
        sockets.append(sock)
    sent = 0
    while drip and time.monotonic() < deadline and sent < len(request) - 2:  # never the final CRLF
        for sock in sockets:
            try:
                sock.send(request[sent:sent + 1])
            except OSError:
                pass  # the server gave up on this one: fine, it is an attacker
        sent += 1
        time.sleep(0.2)
    time.sleep(max(0.0, deadline - time.monotonic()))
    for sock in sockets:
        sock.close()


@dataclass
class LoadResult:
    """The rows of a load run in a second process: [start, end, status or error name]."""
    rows: list = field(default_factory=list)

    @property
    def sent(self) -> int:
        return len(self.rows)

    @property
    def failures(self) -> list:
        return [row for row in self.rows if row[2] != 200]

    def latencies(self) -> list[float]:
        return [end - start for start, end, _ in self.rows]

    def summary(self) -> str:
        return f"{self.sent} requests: {dict(Counter(status for _, _, status in self.rows))}"


@contextmanager
def in_second_process(port: int, seconds: float, path: str, concurrency: int = 16):
    """`python -m tests.load requests` runs while the block does; the LoadResult it yields
    holds the rows after the block."""
    command = [sys.executable, "-m", "tests.load", "requests", "--port", str(port), "--path", path,
               "--seconds", str(seconds), "--concurrency", str(concurrency)]
    result = LoadResult()
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE) as process:
        yield result
        output, _ = process.communicate(timeout=seconds + 30)
    assert process.returncode == 0, f"the load process failed with status {process.returncode}"
    result.rows.extend(json.loads(output))


@contextmanager
def slow_clients(port: int, mode: str, seconds: float, connections: int, path: str):
    """`python -m tests.load slowloris|unread`: `connections` held for `seconds` in a second process."""
    command = [sys.executable, "-m", "tests.load", mode, "--port", str(port), "--seconds", str(seconds),
               "--connections", str(connections), "--path", path]
    with subprocess.Popen(command, cwd=ROOT) as process:
        yield
        process.wait(timeout=seconds + 30)
    assert process.returncode == 0, f"the {mode} clients failed with status {process.returncode}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.load", description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("requests", "slowloris", "unread"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/healthz")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--max-requests", type=int, default=100_000)
    parser.add_argument("--connections", type=int, default=300)
    args = parser.parse_args(argv)
    if args.mode == "requests":
        answers = clients(args.port, [Clients(args.path, args.concurrency, args.interval)], args.seconds,
                          args.max_requests)
        json.dump([[answer.start, answer.end, answer.status] for answer in answers], sys.stdout)
    else:
        hold_connections(args.port, args.connections, args.seconds, args.mode == "slowloris", args.path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
