"""The durable job queue over HTTP: POST /jobs, GET /jobs/<id>, DELETE /jobs/<id>.

`init_app(app)` adds it to a Flask app, the Flask-extension way: the queue is kept in
the app's stack state (deploy/extension.py), made on the first request that needs it, so
the order in which the app imports its task modules and makes its queue does not matter.
Every answer of these routes is JSON, errors included.
"""

import logging
import re

from flask import Blueprint, Flask, abort, current_app, jsonify, request, url_for
from werkzeug.exceptions import HTTPException, MethodNotAllowed, ServiceUnavailable

from deploy.errors import json_error
from deploy.extension import stack_extension
from deploy.jobs.queue import JobNotCancelable, JobQueue, QueueFull, queue_of
from deploy.jobs.registry import InvalidJob
from deploy.settings import Settings
from deploy.threads import size_thread_pool

JOB_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

log = logging.getLogger("deploy.jobs")
bp = Blueprint("flask_stack_jobs", __name__, url_prefix="/jobs")
# Every error of these routes is JSON, whatever the app's own error pages are. A wrong
# method or path under /jobs reaches a view of this blueprint (below), so its error is too.
bp.register_error_handler(HTTPException, json_error)


def init_app(app: Flask, settings: Settings | None = None) -> None:
    """Add the /jobs API and the stack's state to `app`; `settings` default to the validated environment."""
    extension = stack_extension(app, settings)
    size_thread_pool(extension.settings.cpu_threads)
    app.register_blueprint(bp)


def job_queue() -> JobQueue:
    return queue_of(stack_extension(current_app))


def job_id_or_404(job_id: str) -> str:
    if not JOB_ID.fullmatch(job_id):
        abort(404, description=f"no job {job_id[:64]!r}")
    return job_id


@bp.post("")
def submit():
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        abort(400, description='the body must be a JSON object: {"task": "<name>", "args": {...}}')
    queue = job_queue()
    try:
        spec, args = queue.registry.validate(body.get("task"), body.get("args", {}), current_app.config)
        record = queue.submit(spec, args, request_id=request.headers.get("X-Request-ID"))
    except InvalidJob as error:
        abort(400, description=str(error))
    except QueueFull as error:
        raise ServiceUnavailable(str(error), retry_after=10) from None
    log.info("job %s queued: %s", record["id"], spec.name)
    location = url_for("flask_stack_jobs.status", job_id=record["id"])
    return jsonify(record), 202, {"Location": location}


@bp.get("/<job_id>")
def status(job_id):
    record = job_queue().record(job_id_or_404(job_id))
    if record is None:
        abort(404, description=f"no job {job_id!r}")
    return jsonify(record)


@bp.delete("/<job_id>")
def cancel(job_id):
    try:
        record = job_queue().cancel(job_id_or_404(job_id))
    except JobNotCancelable as error:
        abort(409, description=str(error))
    if record is None:
        abort(404, description=f"no job {job_id!r}")
    return jsonify(record)


@bp.route("", methods=["GET", "PUT", "PATCH", "DELETE"])
def jobs_wrong_method():
    raise MethodNotAllowed(valid_methods=["POST"])


@bp.route("/<job_id>", methods=["POST", "PUT", "PATCH"])
def job_wrong_method(job_id):
    raise MethodNotAllowed(valid_methods=["GET", "HEAD", "DELETE"])


@bp.route("/<path:path>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
def no_such_path(path):
    abort(404, description=f"no job {path[:64]!r}")
