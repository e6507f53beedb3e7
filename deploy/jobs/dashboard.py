"""`GET /jobs/dashboard`: a read-only page of the jobs for people, rendered on the server
(Jinja, no build step, nothing from a CDN: it works offline). Counts by status, the recent
jobs with filters by status and task, a page per job, and the scheduled tasks; it reloads
itself every REFRESH_SECONDS. It is off unless JOBS_TOKEN is set; a browser gives the token
by HTTP Basic auth (any user name, the token as password), a script by a bearer header."""

from flask import Blueprint, abort, current_app, render_template, request
from werkzeug.exceptions import HTTPException

from deploy.extension import stack_extension
from deploy.jobs.access import check_token, job_queue
from deploy.jobs.store import STATUSES

REFRESH_SECONDS = 5
PAGE_SIZE = 50

bp = Blueprint("flask_stack_dashboard", __name__, url_prefix="/jobs/dashboard", template_folder="templates")


@bp.before_request
def authenticate():
    if not stack_extension(current_app).settings.jobs_token:
        abort(404, description="The jobs dashboard is off: it needs a token. Set JOBS_TOKEN (or JOBS_TOKEN_FILE) "
                               "and open it with the token as password.")
    check_token("Basic")


@bp.errorhandler(HTTPException)
def error_page(error: HTTPException):
    response = error.get_response()
    response.set_data(render_template("flask_stack_jobs/error.html", error=error))
    response.content_type = "text/html; charset=utf-8"
    return response


@bp.get("")
def overview():
    status = request.args.get("status") or None
    task = request.args.get("task") or None
    if status is not None and status not in STATUSES:
        abort(400, description=f"status must be one of {', '.join(STATUSES)}")
    queue = job_queue()
    try:
        jobs, older = queue.store.page(status, task, request.args.get("cursor") or None, PAGE_SIZE)
    except ValueError as error:
        abort(400, description=str(error))
    counts = queue.store.status_counts()
    return render_template("flask_stack_jobs/overview.html", jobs=jobs, older=older, status=status, task=task,
                           counts={name: counts.get(name, 0) for name in STATUSES}, statuses=STATUSES,
                           tasks=sorted(queue.registry.specs), schedules=queue.schedules(),
                           refresh=REFRESH_SECONDS)


@bp.get("/<job_id>")
def job(job_id: str):
    record = job_queue().record(job_id) if len(job_id) <= 64 else None
    if record is None:
        abort(404, description=f"There is no job {job_id[:64]!r} (a finished job's record is kept for "
                               "JOB_RESULT_TTL).")
    return render_template("flask_stack_jobs/job.html", job=record, refresh=REFRESH_SECONDS)
