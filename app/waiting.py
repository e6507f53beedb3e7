"""Requests that wait on I/O (/job1, /job2): under gevent, a worker serves others meanwhile."""

import math

from flask import Blueprint, abort, current_app, jsonify, request

from app import tasks

bp = Blueprint("waiting", __name__)


def seconds_arg(default: float) -> float:
    """The `seconds` query argument: a number from 0 to JOB_MAX_SECONDS, else a 400."""
    raw = request.args.get("seconds")
    if raw is None:
        return min(default, current_app.config["JOB_MAX_SECONDS"])
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan  # refused below, as are inf and out-of-range values
    try:
        tasks.check_seconds({"seconds": seconds}, current_app.config)
    except ValueError as error:
        abort(400, description=f"{error}, got {raw[:40]!r}")
    return seconds


@bp.get("/job1")
def job1():
    return jsonify(tasks.job1(seconds_arg(default=10)))


@bp.get("/job2")
def job2():
    missing = [name for name in ("arg1", "arg2") if name not in request.args]
    if missing:
        abort(400, description=f"missing query argument: {', '.join(missing)} (e.g. /job2?arg1=hello&arg2=123)")
    return jsonify(tasks.job2(request.args["arg1"], request.args["arg2"], seconds_arg(default=5)))
