"""Docker's HEALTHCHECK: GET /healthz through nginx; exit 0 on 200, else 1 with the reason."""

import http.client
import sys


def main() -> int:
    connection = http.client.HTTPConnection("127.0.0.1", 80, timeout=2)
    try:
        connection.request("GET", "/healthz")
        status = connection.getresponse().status
    except OSError as error:
        print(f"unhealthy: {error}")
        return 1
    finally:
        connection.close()
    print(f"GET /healthz: {status}")
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
