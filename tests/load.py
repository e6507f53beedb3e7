"""Bounded load from a second process, for the reliability suite: `python -m tests.load MODE ...`.

Traffic goes to 127.0.0.1 only (the container's published port). Every mode stops by itself
after --seconds, and `requests` also after --max-requests.

- `requests`: --concurrency clients, each sending GET --path on a new connection after the
  previous answer, at most one every --interval seconds (so that a server that fails fast
  is not flooded: the offered load stays the same). Prints one JSON line: a [start, end,
  status or error] row per request, times on the machine's monotonic clock (the same in
  every process).
- `slowloris`: --connections that send a request's headers one byte at a time.
- `unread`: --connections that send a request and never read the answer.
"""

import argparse
import http.client
import json
import socket
import sys
import threading
import time

HOST = "127.0.0.1"
REQUEST_TIMEOUT = 10


def requests(port: int, path: str, concurrency: int, interval: float, seconds: float,
             max_requests: int) -> list:
    deadline = time.monotonic() + seconds
    rows, lock = [], threading.Lock()

    def client():
        while time.monotonic() < deadline:
            with lock:
                if len(rows) >= max_requests:
                    return
                row = [time.monotonic(), None, None]
                rows.append(row)
            next_start = row[0] + interval
            connection = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT)
            try:
                connection.request("GET", path)
                response = connection.getresponse()
                response.read()
                row[2] = response.status
            except (OSError, http.client.HTTPException) as error:
                row[2] = type(error).__name__
            finally:
                connection.close()
                row[1] = time.monotonic()
            time.sleep(max(0.0, next_start - time.monotonic()))

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return rows


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
        rows = requests(args.port, args.path, args.concurrency, args.interval, args.seconds, args.max_requests)
        json.dump(rows, sys.stdout)
    else:
        hold_connections(args.port, args.connections, args.seconds, args.mode == "slowloris", args.path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
