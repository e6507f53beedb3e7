"""Docker's HEALTHCHECK. A web container: GET /healthz through nginx answers 200.
A worker-only container (ROLE=worker): supervisorctl reports the job consumer RUNNING.
Exit 0 when healthy, else 1 with the reason.

Docker runs it every 2 s, beside the traffic, so it stays light: about 0.08 s of CPU in the
image, where it took 0.115 s with http.client, which imports the email package and ssl for
a request that is one line of HTTP/1.0 on a socket. subprocess is imported only for a
worker-only container. The role comes first, from the settings (most of what remains): a
worker that shares a web container's network (`--network container:...`, a Kubernetes pod)
must not pass on that one's nginx."""

import socket
import sys

from deploy.settings import Settings

HEALTH_REQUEST = b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"


def web_check() -> tuple[bool, str]:
    """Whether nginx answers 200 to GET /healthz, and its status line or the error."""
    try:
        with socket.create_connection(("127.0.0.1", 80), timeout=2) as connection:
            connection.sendall(HEALTH_REQUEST)
            status_line = connection.makefile("rb").readline(200).decode("latin-1").strip()
    except OSError as error:
        return False, f"unhealthy: GET /healthz: {error}"
    return status_line.split(" ")[1:2] == ["200"], f"GET /healthz: {status_line or 'no answer'}"


def consumer_is_running() -> bool:
    import subprocess  # noqa: PLC0415  (a worker-only container's check: see above)
    status = subprocess.run(["supervisorctl", "status", "jobs"],
                            capture_output=True, text=True, timeout=5)
    print(status.stdout.strip())
    return status.returncode == 0  # supervisorctl: 0 only when RUNNING


def main() -> int:
    if Settings.from_env().role == "worker":
        return 0 if consumer_is_running() else 1
    healthy, answer = web_check()
    print(answer)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
