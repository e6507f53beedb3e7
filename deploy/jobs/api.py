"""The durable job queue over HTTP, in any Flask app that calls `init_app(app)`:

    POST   /jobs                  {"task", "args", "delay" | "run_at"}; Idempotency-Key: repeat safely
    GET    /jobs                  ?status=&task=&limit=&cursor=: the jobs, newest first, a page at a time
    GET    /jobs/<id>             ?wait=N: answer as soon as it ends, or after N seconds (at most 60)
    DELETE /jobs/<id>             cancel it: at once if it waits, by its consumer if it runs
    POST   /jobs/<id>/retry       run a failed, interrupted or canceled job again
    GET    /jobs/schedules        the scheduled tasks, their next and last runs
    GET    /jobs/dashboard        a read-only page for people (deploy/jobs/dashboard.py)

The queue lives in the app's stack state (deploy/extension.py), made on the first request
that needs it, so the order in which the app imports its task modules and makes its queue
does not matter. Every answer is JSON, errors included (`{"error", "message"}`, naming the
problem). With JOBS_TOKEN set, every request needs `Authorization: Bearer <token>` (or HTTP
Basic with the token as password), compared in constant time; otherwise a JSON 401.
"""

import logging
import math
import re
from datetime import datetime

from flask import Blueprint, Flask, abort, current_app, jsonify, request, url_for
from werkzeug.exceptions import HTTPException, MethodNotAllowed, ServiceUnavailable

from deploy.errors import json_error
from deploy.extension import stack_extension
from deploy.jobs import dashboard
from deploy.jobs.access import check_token, job_queue, waits
from deploy.jobs.queue import JobNotCancelable, JobNotRetryable, QueueFull
from deploy.jobs.registry import InvalidJob
from deploy.jobs.store import FINAL, STATUSES, Idempotency, fingerprint
from deploy.settings import Settings

JOB_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")
BODY_FIELDS = ("task", "args", "delay", "run_at")
MAX_DELAY = 366 * 86400  # seconds ahead a job may be scheduled
MAX_WAIT = 60  # seconds GET /jobs/<id>?wait= may hold a request
PAGE_SIZE, MAX_PAGE_SIZE = 50, 500

log = logging.getLogger("deploy.jobs")
bp = Blueprint("flask_stack_jobs", __name__, url_prefix="/jobs")
# Every error of these routes is JSON, whatever the app's own error pages are. A wrong
# method or path under /jobs reaches a view of this blueprint (below), so its error is too.
bp.register_error_handler(HTTPException, json_error)


def init_app(app: Flask, settings: Settings | None = None) -> None:
    """Add the /jobs API, its dashboard and the stack's state to `app`; `settings` default to
    the validated environment."""
    stack_extension(app, settings)
    app.register_blueprint(bp)
    app.register_blueprint(dashboard.bp)


@bp.before_request
def authenticate():
    check_token("Bearer")


def job_id_or_404(job_id: str) -> str:
    if not JOB_ID.fullmatch(job_id):
        abort(404, description=f"no job {job_id[:64]!r}")
    return job_id


def found(record: dict | None, job_id: str) -> dict:
    if record is None:
        abort(404, description=f"no job {job_id!r}")
    return record


def requested_start(body: dict, now: float) -> float | None:
    """The time the body asks the job to start at: `delay` seconds from now, or `run_at`."""
    if "delay" in body and "run_at" in body:
        abort(400, description="give delay or run_at, not both")
    if "delay" in body:
        delay = body["delay"]
        if isinstance(delay, bool) or not isinstance(delay, int | float) or not 0 <= delay <= MAX_DELAY:
            abort(400, description=f"delay must be a number of seconds from 0 to {MAX_DELAY}")
        return now + delay
    if "run_at" in body:
        try:
            run_at = datetime.fromisoformat(body["run_at"]) if isinstance(body["run_at"], str) else None
        except ValueError:
            run_at = None
        if run_at is None or run_at.tzinfo is None:
            abort(400, description="run_at must be an ISO 8601 time with its offset, e.g. 2026-12-24T18:00:00Z")
        if run_at.timestamp() > now + MAX_DELAY:
            abort(400, description=f"run_at must be within {MAX_DELAY // 86400} days")
        return run_at.timestamp()
    return None


def idempotency_of(body: dict) -> Idempotency | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not IDEMPOTENCY_KEY.fullmatch(key):
        abort(400, description="Idempotency-Key must be 1 to 255 printable ASCII characters without spaces")
    return Idempotency(key, fingerprint(body), stack_extension(current_app).settings.job_result_ttl)


@bp.post("")
def submit():
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        abort(400, description='the body must be a JSON object: {"task": "<name>", "args": {...}}')
    unknown = sorted(set(body) - set(BODY_FIELDS))
    if unknown:
        abort(400, description=f"unknown field {', '.join(map(repr, unknown))}; the body takes "
                               f"{', '.join(BODY_FIELDS)}")
    queue = job_queue()
    run_at = requested_start(body, queue.store.now())
    idempotency = idempotency_of(body)
    try:
        spec, args = queue.registry.validate(body.get("task"), body.get("args", {}), current_app.config)
        inserted = queue.submit(spec, args, request_id=request.headers.get("X-Request-ID"), run_at=run_at,
                                idempotency=idempotency)
    except InvalidJob as error:
        abort(400, description=str(error))
    except QueueFull as error:
        raise ServiceUnavailable(str(error), retry_after=10) from None
    record = inserted.record
    if inserted.conflict:
        first = f" (job {record['id']})" if record else ""
        abort(422, description=f"Idempotency-Key {idempotency.key!r} was used{first} for another request body "
                               "within JOB_RESULT_TTL: use a new key for a new job")
    location = {"Location": url_for("flask_stack_jobs.status", job_id=record["id"])}
    if not inserted.new:
        return jsonify(record), 200, location
    log.info("job %s %s: %s", record["id"], record["status"], spec.name)
    return jsonify(record), 202, location


def query_args(allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(request.args) - set(allowed))
    if unknown:
        abort(400, description=f"unknown query argument {', '.join(map(repr, unknown))}; this takes "
                               f"{', '.join(allowed)}")


@bp.get("")
def listing():
    query_args(("status", "task", "limit", "cursor"))
    status = request.args.get("status")
    if status is not None and status not in STATUSES:
        abort(400, description=f"status must be one of {', '.join(STATUSES)}")
    raw_limit = request.args.get("limit", str(PAGE_SIZE))
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_PAGE_SIZE:
        abort(400, description=f"limit must be a whole number from 1 to {MAX_PAGE_SIZE}")
    try:
        jobs, following = job_queue().store.page(status, request.args.get("task"), request.args.get("cursor"),
                                                 int(raw_limit))
    except ValueError as error:
        abort(400, description=str(error))
    return jsonify(jobs=jobs, next=following)


@bp.get("/<job_id>")
def status(job_id):
    query_args(("wait",))
    job_id = job_id_or_404(job_id)
    record = found(job_queue().record(job_id), job_id)
    raw_wait = request.args.get("wait")
    if raw_wait is not None:
        try:
            seconds = float(raw_wait)
        except ValueError:
            seconds = math.nan
        if not 0 <= seconds <= MAX_WAIT:
            abort(400, description=f"wait must be a number of seconds from 0 to {MAX_WAIT}")
        if record["status"] not in FINAL and seconds:
            waits().wait(job_id, seconds)
            record = found(job_queue().record(job_id), job_id)
    return jsonify(record)


@bp.delete("/<job_id>")
def cancel(job_id):
    job_id = job_id_or_404(job_id)
    try:
        record, canceled = job_queue().cancel(job_id)
    except JobNotCancelable as error:
        abort(409, description=str(error))
    return jsonify(found(record, job_id)), 200 if canceled else 202


@bp.post("/<job_id>/retry")
def retry(job_id):
    job_id = job_id_or_404(job_id)
    try:
        record = job_queue().retry(job_id)
    except JobNotRetryable as error:
        abort(409, description=str(error))
    return jsonify(found(record, job_id)), 202, {"Location": url_for("flask_stack_jobs.status", job_id=job_id)}


@bp.get("/schedules")
def schedule_list():
    query_args(())
    return jsonify(schedules=job_queue().schedules())


@bp.route("", methods=["PUT", "PATCH", "DELETE"])
def jobs_wrong_method():
    raise MethodNotAllowed(valid_methods=["GET", "HEAD", "POST"])


@bp.route("/<job_id>", methods=["POST", "PUT", "PATCH"])
def job_wrong_method(job_id):
    raise MethodNotAllowed(valid_methods=["GET", "HEAD", "DELETE"])


@bp.route("/<path:path>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
def no_such_path(path):
    abort(404, description=f"no job {path[:64]!r}")
