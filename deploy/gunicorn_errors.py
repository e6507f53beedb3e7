"""gunicorn's own refusals in JSON, in the shape of nginx's and the app's.

nginx refuses first what it can see (a request line or header too long, bytes outside
ASCII in the target, a bad method or version), and gunicorn's limits are nginx's (see
gunicorn_config.py), so gunicorn refuses only what nginx cannot check: a header value with
control bytes (nginx passes them on; RFC 9110 forbids them). gunicorn writes every refusal
through one function, `gunicorn.util.write_error`, as an HTML page; `install()` replaces that
function in the worker, so that the client gets `{"error": reason, "message": ...}` instead,
which names no server.
"""

import json

from gunicorn import util


def write_json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    body = json.dumps({"error": reason, "message": mesg or reason}).encode() + b"\n"
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1")
    sock.sendall(head + body)


def install() -> None:
    util.write_error = write_json_error
