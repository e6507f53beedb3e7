#!/usr/bin/python3 -IS
"""Docker's HEALTHCHECK (the image's `healthcheck` command). A web container: GET /healthz
through nginx answers 200. A worker-only container (ROLE=worker): supervisorctl reports the
job consumer RUNNING, that is up for 3 s and not starting again after a crash. Exit 0 when
healthy, else 1 with the reason.

Docker runs it as root (the image has no USER: the entrypoint needs root), unless the
container runs with `--user` or as a Kubernetes pod's runAsUser. As root it first becomes
the stack's user, the owner of supervisord's control socket, as deploy/stack-user.sh does for
the shell commands. It never stays root: a control socket that is a symbolic link, not a
socket, or root's own makes the check fail.

Docker runs it every 2 s, beside the traffic, so it stays light (its cost, measured, is in
bench/README.md, "Docker's health check"):
- Python runs it isolated and without site packages (`-IS`), and no shell comes first: a
  shell wrapper, with the programs it ran to change user, cost as much as the check itself.
- `_socket`, the C module, sends one line of HTTP/1.0. The `socket` module imports enum
  and selectors, which cost as much again.
- It reads the role first, so that a worker that shares a web container's network
  (`--network container:...`, a Kubernetes pod) does not pass on that one's nginx.
  deploy/configure.py writes the validated role to $STACK_RUN_DIR/role at the start.
  Importing the settings here would cost more than all the rest.
"""

import _socket
import os
import stat
import sys
import time

HEALTH_REQUEST = b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
ROLE_FILE = "role"  # in $STACK_RUN_DIR, written by deploy/configure.py
CONTROL_SOCKET = "supervisor.sock"  # in $STACK_RUN_DIR: its owner is the stack's user
TIME_LIMIT = 1.5  # seconds for the whole answer: below Docker's --timeout (2 s), so the reason is logged


class Unhealthy(Exception):
    """The check cannot run as the stack's user."""


def become_stack_user(run_dir: str) -> None:
    """As root: the stack's user and group, and no other groups."""
    if os.getuid() != 0:
        return
    control_socket = os.path.join(run_dir, CONTROL_SOCKET)
    try:
        owner = os.stat(control_socket, follow_symlinks=False)
    except OSError:
        raise Unhealthy(f"the stack is not running in this container (no {control_socket})") from None
    if not stat.S_ISSOCK(owner.st_mode) or owner.st_uid == 0:
        raise Unhealthy(f"{control_socket} is not a socket of the stack's user: not checking as root")
    try:
        os.setgroups([])
        os.setgid(owner.st_gid)
        os.setuid(owner.st_uid)
    except OSError as error:
        raise Unhealthy(f"cannot become the stack's user (uid {owner.st_uid}): {error}") from None


def web_check() -> tuple[bool, str]:
    """Whether nginx answers 200 to GET /healthz, and its status line or the error."""
    deadline = time.monotonic() + TIME_LIMIT
    connection = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    answer = b""
    try:
        connection.settimeout(TIME_LIMIT)
        connection.connect(("127.0.0.1", 80))
        connection.sendall(HEALTH_REQUEST)
        while b"\n" not in answer and len(answer) < 200:
            connection.settimeout(max(deadline - time.monotonic(), 0.001))
            received = connection.recv(200)
            if not received:
                break
            answer += received
    except OSError as error:
        return False, f"unhealthy: GET /healthz: {error}"
    finally:
        connection.close()
    status_line = answer.split(b"\n", 1)[0][:200].decode("latin-1").strip()
    return status_line.split(" ")[1:2] == ["200"], f"GET /healthz: {status_line or 'no answer'}"


def consumer_check() -> tuple[bool, str]:
    """Whether supervisord has the job consumer RUNNING, and its status line or the error."""
    import subprocess  # noqa: PLC0415  (a worker-only container's check only)
    try:
        status = subprocess.run(["supervisorctl", "status", "jobs"],
                                capture_output=True, text=True, timeout=TIME_LIMIT)
    except (OSError, subprocess.TimeoutExpired) as error:
        return False, f"unhealthy: supervisorctl status jobs: {error}"
    # "jobs  RUNNING  pid 21, uptime 0:00:05". Only RUNNING, which supervisord gives a consumer
    # that has stayed up for its startsecs (3 s): supervisorctl's exit status is 0 for STARTING
    # and BACKOFF too, the states of a consumer that keeps crashing.
    return status.stdout.split()[1:2] == ["RUNNING"], status.stdout.strip()


def main() -> int:
    run_dir = os.environ.get("STACK_RUN_DIR", "")
    try:
        become_stack_user(run_dir)
        with open(os.path.join(run_dir, ROLE_FILE)) as file:
            role = file.read().strip()
    except Unhealthy as reason:
        print(f"unhealthy: {reason}")
        return 1
    except OSError as error:
        print(f"unhealthy: the stack has not started: {error}")
        return 1
    healthy, answer = consumer_check() if role == "worker" else web_check()
    print(answer)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
