"""Every error is a JSON body with its status code; an unexpected one is logged, never shown."""

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException


def http_error(error: HTTPException):
    response = jsonify(error=error.name, message=error.description)
    response.status_code = error.code
    for name, value in error.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value  # e.g. Allow on a 405, Retry-After on a 503
    return response


def register(app: Flask) -> None:
    # An unexpected exception reaches this as an InternalServerError after Flask has logged
    # its traceback: the client gets the JSON 500, never the traceback.
    app.register_error_handler(HTTPException, http_error)
