"""What the tests share that is not about one container: the checkout's root, image builds,
raw HTTP, the time format of the logs, the Redis image, and the tools a test needs."""

import http.client
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# pip reads these; forwarded to `docker build` so the image installs from the same mirror.
PIP_BUILD_ARGS = ("PIP_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX")
# The time of every log line of the stack: ISO 8601, UTC, milliseconds.
ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00")

# Debian's redis-server in an image of its own name (no registry here to give the official one).
REDIS_IMAGE = "flask-stack-test-redis"
REDIS_DOCKERFILE = """FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends redis-server && rm -rf /var/lib/apt/lists/* \\
    && install -d -o redis -g redis /data
WORKDIR /data
USER redis
CMD ["redis-server", "--protected-mode", "no", "--save", ""]
"""


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def require_tool(command: str, package: str) -> str:
    """The path of `command`; without it the test is skipped on a developer's machine and fails
    in CI (`.ci/run` installs every tool the suite needs)."""
    path = shutil.which(command)
    if path is None:
        message = f"this test needs {command}: apt-get install {package}"
        if in_ci():
            pytest.fail(f"{message} (CI must run it)")
        pytest.skip(message)
    return path


def build_image(tag: str, context: Path | None, *build_args: str, dockerfile: str | None = None) -> str:
    """`docker build` of `context` (or of `dockerfile`'s text, without a context), with the
    mirror's variables passed on; fails with its output."""
    mirror = [f"--build-arg={name}={os.environ[name]}" for name in PIP_BUILD_ARGS if name in os.environ]
    # Host networking lets the build reach a mirror or wheelhouse served on the host's loopback.
    command = ["docker", "build", "--network=host", *mirror, *build_args, "-t", tag,
               "-" if dockerfile is not None else str(context)]
    build = subprocess.run(command, capture_output=True, text=True, timeout=900, input=dockerfile)
    if build.returncode != 0:
        pytest.fail(f"docker build of {context or tag} failed:\n{build.stdout[-4000:]}\n{build.stderr[-4000:]}")
    return tag


def redis_image() -> str:
    return build_image(REDIS_IMAGE, None, dockerfile=REDIS_DOCKERFILE)


def raw_request(port: int, data: bytes) -> tuple[int, http.client.HTTPMessage, bytes]:
    """Sends `data` as it is to 127.0.0.1:`port`; the answer's status, headers and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(data)
        except OSError:
            pass  # the server answered and closed before reading it all: its answer is still there
        response = http.client.HTTPResponse(sock, method=data.split(b" ", 1)[0].decode("latin-1"))
        response.begin()
        return response.status, response.headers, response.read()
