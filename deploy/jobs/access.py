"""What the job API and the dashboard share in a request: the app's job queue, its waits,
and the check of JOBS_TOKEN."""

import base64
import binascii
import hmac

from flask import current_app, request
from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import Unauthorized

from deploy.extension import stack_extension
from deploy.jobs.queue import JobQueue, queue_of
from deploy.jobs.waiting import Waits


def job_queue() -> JobQueue:
    return queue_of(stack_extension(current_app))


def waits() -> Waits:
    return stack_extension(current_app).part("waits", lambda settings: Waits(job_queue().store))


def token_given() -> str | None:
    """The token of the request's Authorization header: a bearer token, or HTTP Basic's
    password (any user name), which is how a browser gives it."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return None
    return None


def check_token(scheme: str) -> None:
    """With JOBS_TOKEN set, Unauthorized (a 401 asking for `scheme`: Bearer or Basic) unless the
    request carries it; compared in constant time."""
    expected = stack_extension(current_app).settings.jobs_token
    if not expected:
        return
    given = token_given()
    if given is None or not hmac.compare_digest(given.encode(), expected.encode()):
        raise Unauthorized("this needs the jobs token (JOBS_TOKEN): Authorization: Bearer <token>"
                           if given is None else "the token is not the jobs token (JOBS_TOKEN)",
                           www_authenticate=WWWAuthenticate(scheme, {"realm": "jobs"}))
