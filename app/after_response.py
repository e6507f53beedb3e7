"""GET /job: answer at once, then run job1 and job2 in this worker (deploy.after_response);
their start and end go to the app's log. Work that must not be lost goes to POST /jobs."""

from functools import partial

from flask import Blueprint, jsonify

from app import tasks
from app.waiting import seconds_arg
from deploy import after_response

bp = Blueprint("after_response", __name__)


@bp.get("/job")
def job_after_response():
    calls = {
        "job1": partial(tasks.job1, seconds_arg(default=10)),
        "job2": partial(tasks.job2, "background", "job", seconds_arg(default=5)),
    }
    after_response(calls)
    return jsonify(started=list(calls)), 202
