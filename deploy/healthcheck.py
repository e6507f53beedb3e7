"""Docker's HEALTHCHECK. A web container: GET /healthz through nginx answers 200.
A worker-only container (ROLE=worker): supervisorctl reports the job consumer RUNNING.
Exit 0 when healthy, else 1 with the reason.

Docker runs it every 2 s, beside the traffic, so it stays light: about 0.04 s of CPU with
its wrapper (deploy/healthcheck), which runs it as a script without site packages; it uses
the standard library's socket for one line of HTTP/1.0. The role comes first, so that a
worker that shares a web container's network (`--network container:...`, a Kubernetes pod)
does not pass on that one's nginx. deploy/configure.py wrote it, validated, to
$STACK_RUN_DIR/role at the start: importing the settings here took as much CPU as all the rest.
"""

import os
import socket
import sys

HEALTH_REQUEST = b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
ROLE_FILE = "role"  # in $STACK_RUN_DIR, written by deploy/configure.py


def web_check() -> tuple[bool, str]:
    """Whether nginx answers 200 to GET /healthz, and its status line or the error."""
    try:
        # Not create_connection: its getaddrinfo() imports the IDNA codec, a third of the check.
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as connection:
            connection.settimeout(2)
            connection.connect(("127.0.0.1", 80))
            connection.sendall(HEALTH_REQUEST)
            status_line = connection.makefile("rb").readline(200).decode("latin-1").strip()
    except OSError as error:
        return False, f"unhealthy: GET /healthz: {error}"
    return status_line.split(" ")[1:2] == ["200"], f"GET /healthz: {status_line or 'no answer'}"


def consumer_is_running() -> bool:
    import subprocess  # noqa: PLC0415  (a worker-only container's check only)
    status = subprocess.run(["supervisorctl", "status", "jobs"],
                            capture_output=True, text=True, timeout=5)
    print(status.stdout.strip())
    return status.returncode == 0  # supervisorctl: 0 only when RUNNING


def main() -> int:
    role_file = os.path.join(os.environ.get("STACK_RUN_DIR", ""), ROLE_FILE)
    try:
        with open(role_file) as file:
            role = file.read().strip()
    except OSError as error:
        print(f"unhealthy: the stack has not started: {error}")
        return 1
    if role == "worker":
        return 0 if consumer_is_running() else 1
    healthy, answer = web_check()
    print(answer)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
