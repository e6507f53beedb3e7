"""Docker's HEALTHCHECK. A web container: GET /healthz through nginx answers 200.
A worker-only container (ROLE=worker): supervisord reports the job consumer RUNNING.
Exit 0 when healthy, else 1 with the reason."""

import http.client
import subprocess
import sys

from deploy.settings import Settings


def web_is_healthy() -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", 80, timeout=2)
    try:
        connection.request("GET", "/healthz")
        status = connection.getresponse().status
    except OSError as error:
        print(f"unhealthy: {error}")
        return False
    finally:
        connection.close()
    print(f"GET /healthz: {status}")
    return status == 200


def consumer_is_running() -> bool:
    status = subprocess.run(["supervisorctl", "status", "jobs"],
                            capture_output=True, text=True, timeout=5)
    print(status.stdout.strip())
    return status.returncode == 0  # supervisorctl: 0 only when RUNNING


def main() -> int:
    worker_only = Settings.from_env().role == "worker"
    return 0 if (consumer_is_running() if worker_only else web_is_healthy()) else 1


if __name__ == "__main__":
    sys.exit(main())
