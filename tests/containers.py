"""The tests' helpers for real containers and real HTTP: one polling helper with a deadline,
containers started on free loopback ports, and the job API's client side. Everything here
talks to 127.0.0.1 or to containers the tests started."""

import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
TERMINAL = {"done", "failed", "interrupted", "canceled"}


def docker(*args: str, timeout: float = 60, check: bool = True,
           input_text: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout,
                          check=check, input=input_text)


def docker_available() -> bool:
    try:
        return docker("info", timeout=20, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(check: Callable[[], T], deadline: float, what: str, container: "Container | None" = None,
               interval: float = 0.1) -> T:
    """Calls `check` until it returns something true, which it returns, for at most `deadline`
    seconds (like docker-library's retry.sh). An OSError counts as not yet. Fails with `what`
    and the last value seen, at once if `container` stopped meanwhile (with its logs)."""
    end = time.monotonic() + deadline
    last = None
    while True:
        if container is not None and not container.state()["Running"]:
            raise AssertionError(f"{what}: the container exited (last: {last!r}):\n{container.logs()}")
        try:
            last = check()
        except OSError as error:
            last = error
        else:
            if last:
                return last
        if time.monotonic() >= end:
            logs = f":\n{container.logs()}" if container is not None else ""
            raise AssertionError(f"{what}: not within {deadline} s (last: {last!r}){logs}")
        time.sleep(interval)


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self):
        return json.loads(self.body)


def http_request(port: int, path: str, method: str = "GET", headers: dict | None = None,
                 body: bytes | None = None, timeout: float = 30) -> Response:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return Response(response.status, response.headers, response.read())
    finally:
        connection.close()


class Container:
    def __init__(self, container_id: str):
        self.id = container_id
        self._port = None

    @property
    def port(self) -> int:
        """The loopback port Docker published port 80 on."""
        if self._port is None:
            mapping = docker("port", self.id, "80/tcp").stdout.split()[0]  # 127.0.0.1:49153
            self._port = int(mapping.rsplit(":", 1)[1])
        return self._port

    def request(self, path: str, method: str = "GET", headers: dict | None = None,
                body: bytes | None = None, timeout: float = 30) -> Response:
        return http_request(self.port, path, method, headers, body, timeout)

    def get(self, path: str, **kwargs) -> Response:
        return self.request(path, **kwargs)

    def restart(self) -> None:
        """`docker restart`; Docker publishes port 80 on a new host port."""
        docker("restart", self.id, timeout=60)
        self._port = None
        self.wait_until_serving()

    def state(self) -> dict:
        return json.loads(docker("inspect", "--format", "{{json .State}}", self.id).stdout)

    def logs(self) -> str:
        result = docker("logs", self.id, check=False)
        return result.stdout + result.stderr

    def exec(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        return docker("exec", self.id, *command, check=check)

    def wait_until_serving(self, deadline: float = 30) -> None:
        """Until GET /healthz through nginx answers 200."""
        wait_until(lambda: self.get("/healthz", timeout=2).status == 200, deadline,
                   "GET /healthz answering 200", container=self, interval=0.2)

    def wait_until_healthy(self, deadline: float = 30) -> None:
        """Until Docker's HEALTHCHECK calls the container healthy."""
        wait_until(lambda: self.state()["Health"]["Status"] == "healthy", deadline,
                   "Docker's health status `healthy`", container=self, interval=0.2)

    def wait_for_exit(self, deadline: float) -> int:
        """The container's exit code; fails if it is still running after `deadline` seconds."""
        try:
            result = docker("wait", self.id, timeout=deadline, check=False)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {deadline} s:\n{self.logs()}") from None
        return int(result.stdout.strip())

    def main_process_pid(self, pidfile: str) -> int:
        return int(self.exec("cat", pidfile).stdout)

    def pid_of(self, program: str) -> int:
        """The pid of supervisord's `program`, 0 while it is not running."""
        return int(self.exec("supervisorctl", "pid", program, check=False).stdout.strip() or 0)

    def children(self, pid: int) -> set[int]:
        return {int(child) for child in self.exec("cat", f"/proc/{pid}/task/{pid}/children").stdout.split()}

    def metrics(self) -> str:
        """The stack's metrics as its exposition serves them, read inside the container (the
        tests publish METRICS_PORT only where they ask for it)."""
        read = ("import urllib.request; "
                "print(urllib.request.urlopen('http://127.0.0.1:9100/metrics', timeout=5).read().decode())")
        return self.exec("python3", "-c", read).stdout

    def tcp_sockets(self) -> list[tuple[int, str]]:
        """(local port, state) of each TCP socket in the container: state 0A is LISTEN, 01 ESTABLISHED."""
        sockets = []
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for row in self.exec("cat", table).stdout.splitlines()[1:]:
                local_address, state = row.split()[1], row.split()[3]
                sockets.append((int(local_address.rsplit(":", 1)[1], 16), state))
        return sockets


def wait_for_line(path: Path, pattern: str, deadline: float = 10) -> str:
    """The first line of `path` matching `pattern`, once one is written (a server writes its
    access line after the answer)."""
    def matching_line():
        if path.exists():
            return next((line for line in path.read_text(errors="replace").splitlines()
                         if re.search(pattern, line)), None)
    return wait_until(matching_line, deadline, f"a line matching {pattern!r} in {path}")


def user_owned_folder(path: Path) -> Path:
    """Makes `path` a folder owned by a non-root user, as on a developer's machine (uid 1000
    when the tests run as root): a log folder to mount."""
    path.mkdir()
    if os.getuid() == 0:
        shutil.chown(path, 1000, 1000)
    return path


class ContainerFactory:
    def __init__(self, image: str):
        self.image = image
        self.started: list[Container] = []

    def start(self, *options: str, env: dict | None = None, logs: Path | None = None,
              wait: bool = True, image: str | None = None, publish: bool = True) -> Container:
        """`docker run -d` with port 80 published on a free loopback port (unless not `publish`)."""
        args = ["run", "-d", *(["-p", "127.0.0.1::80"] if publish else []), *options]
        for name, value in (env or {}).items():
            args += ["-e", f"{name}={value}"]
        if logs is not None:
            args += ["-v", f"{logs}:/var/log/app"]
        container = Container(docker(*args, image or self.image).stdout.strip())
        self.started.append(container)
        if wait:
            container.wait_until_serving()
        return container

    def remove_all(self, print_logs: bool) -> None:
        for container in self.started:
            if print_logs:
                print(f"--- logs of container {container.id[:12]} ---\n{container.logs()}")
            docker("rm", "-f", "-v", container.id, check=False)


def serving_container(image: str, request, *options: str, **start):
    """A module fixture's one container, for the cases that leave it serving: started as
    ContainerFactory.start starts it, removed at the end, its logs printed if a test failed."""
    factory = ContainerFactory(image)
    failed_before = request.session.testsfailed
    yield factory.start(*options, **start)
    factory.remove_all(print_logs=request.session.testsfailed > failed_before)


# --- The job API, from a Flask test client or over HTTP ------------------------------------

class JobsClient:
    """The job API through `raw(method, path, body, headers) -> (status, json)`: a Flask test
    client, or HTTP to a container; with JOBS_TOKEN's `token`, each request carries it."""

    def __init__(self, raw: Callable[[str, str, dict | None, dict], tuple[int, dict]], token: str | None = None):
        self._raw = raw
        self.token = token

    def raw(self, method: str, path: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, dict]:
        auth = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return self._raw(method, path, body, {**auth, **(headers or {})})

    def request(self, method: str, path: str, body: dict | None) -> tuple[int, dict]:
        return self.raw(method, path, body)

    @classmethod
    def over_http(cls, port: Callable[[], int] | int, token: str | None = None) -> "JobsClient":
        def raw(method, path, body, headers):
            response = http_request(port() if callable(port) else port, path, method,
                                    {"Content-Type": "application/json", **headers},
                                    None if body is None else json.dumps(body).encode(), timeout=90)
            return response.status, response.json()
        return cls(raw, token)

    @classmethod
    def of_flask(cls, client, token: str | None = None) -> "JobsClient":
        def raw(method, path, body, headers):
            response = client.open(path, method=method, json=body, headers=headers)
            return response.status_code, response.json
        return cls(raw, token)

    def submit_body(self, body: dict) -> dict:
        status, record = self.request("POST", "/jobs", body)
        assert status == 202, record
        return record

    def submit(self, task: str, **args) -> dict:
        return self.submit_body({"task": task, "args": args})

    def record(self, job_id: str) -> dict:
        status, record = self.request("GET", f"/jobs/{job_id}", None)
        assert status == 200, record
        return record

    def wait_for_status(self, job_id: str, statuses=TERMINAL, deadline: float = 30,
                        container: Container | None = None) -> dict:
        return wait_until(lambda: (record := self.record(job_id))["status"] in statuses and record,
                          deadline, f"job {job_id} in {sorted(statuses)}", container=container)
