"""Real containers of the image for the tests: started with a free loopback port, waited on
with deadlines, driven with the docker CLI and plain HTTP."""

import http.client
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


def docker(*args: str, timeout: float = 60, check: bool = True,
           input_text: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout,
                          check=check, input=input_text)


def docker_available() -> bool:
    try:
        return docker("info", timeout=20, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self):
        return json.loads(self.body)


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
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return Response(response.status, response.headers, response.read())
        finally:
            connection.close()

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
        """Until GET /healthz through nginx answers 200; fails with the logs if it does not."""
        end = time.monotonic() + deadline
        last = None
        while time.monotonic() < end:
            if not self.state()["Running"]:
                raise AssertionError(f"container exited while starting:\n{self.logs()}")
            try:
                last = self.get("/healthz", timeout=2).status
                if last == 200:
                    return
            except OSError as error:
                last = error
            time.sleep(0.2)
        raise AssertionError(f"not serving within {deadline} s (last: {last}):\n{self.logs()}")

    def wait_for_exit(self, deadline: float) -> int:
        """The container's exit code; fails if it is still running after `deadline` seconds."""
        try:
            result = docker("wait", self.id, timeout=deadline, check=False)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {deadline} s:\n{self.logs()}") from None
        return int(result.stdout.strip())

    def main_process_pid(self, pidfile: str) -> int:
        return int(self.exec("cat", pidfile).stdout)

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
    access line after the answer); fails with the file after `deadline` seconds."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if path.exists():
            for line in path.read_text().splitlines():
                if re.search(pattern, line):
                    return line
        time.sleep(0.1)
    raise AssertionError(f"no line matching {pattern!r} in {path} within {deadline} s:\n"
                         f"{path.read_text() if path.exists() else '(missing)'}")


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

    def start(self, *options: str, env: dict | None = None, logs: str | None = None,
              wait: bool = True) -> Container:
        """`docker run -d` with port 80 published on a free loopback port."""
        args = ["run", "-d", "-p", "127.0.0.1::80", *options]
        for name, value in (env or {}).items():
            args += ["-e", f"{name}={value}"]
        if logs is not None:
            args += ["-v", f"{logs}:/var/log/app"]
        container = Container(docker(*args, self.image).stdout.strip())
        self.started.append(container)
        if wait:
            container.wait_until_serving()
        return container

    def remove_all(self, print_logs: bool) -> None:
        for container in self.started:
            if print_logs:
                print(f"--- logs of container {container.id[:12]} ---\n{container.logs()}")
            docker("rm", "-f", "-v", container.id, check=False)
