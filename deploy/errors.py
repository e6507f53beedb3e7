"""Errors as JSON: `{"error": name, "message": description}` with the error's status code,
the shape nginx's own refusals have too. An unexpected exception is logged, never shown."""

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException


def json_error(error: HTTPException):
    response = jsonify(error=error.name, message=error.description)
    response.status_code = error.code
    for name, value in error.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value  # e.g. Allow on a 405, Retry-After on a 503
    return response


def json_errors(app: Flask) -> None:
    """Every error of `app` in JSON (an API's choice; an app with HTML pages keeps its own).
    An unexpected exception reaches the handler as an InternalServerError after Flask has
    logged its traceback: the client gets the JSON 500, never the traceback."""
    app.register_error_handler(HTTPException, json_error)
