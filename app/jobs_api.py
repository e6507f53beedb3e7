"""The durable job queue over HTTP: POST /jobs, GET /jobs/<id>, DELETE /jobs/<id>."""

import re

from flask import Blueprint, abort, current_app, jsonify, request, url_for
from werkzeug.exceptions import ServiceUnavailable

from app.job_queue import InvalidJob, JobNotCancelable, QueueFull

bp = Blueprint("jobs_api", __name__, url_prefix="/jobs")

JOB_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def job_queue():
    return current_app.extensions["job_queue"]


def existing_record(job_id: str) -> dict:
    record = job_queue().record(job_id) if JOB_ID.fullmatch(job_id) else None
    if record is None:
        abort(404, description=f"no job {job_id[:64]!r}")
    return record


@bp.post("")
def submit():
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        abort(400, description='the body must be a JSON object: {"task": "<name>", "args": {...}}')
    try:
        spec, args = job_queue().registry.validate(body.get("task"), body.get("args", {}), current_app.config)
        record = job_queue().submit(spec, args)
    except InvalidJob as error:
        abort(400, description=str(error))
    except QueueFull as error:
        raise ServiceUnavailable(str(error), retry_after=10) from None
    location = url_for("jobs_api.status", job_id=record["id"])
    return jsonify(record), 202, {"Location": location}


@bp.get("/<job_id>")
def status(job_id):
    return jsonify(existing_record(job_id))


@bp.delete("/<job_id>")
def cancel(job_id):
    try:
        return jsonify(job_queue().cancel(existing_record(job_id)))
    except JobNotCancelable as error:
        abort(409, description=str(error))
