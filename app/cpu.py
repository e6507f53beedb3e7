"""GET /cpu?rounds=N: CPU-heavy work in a request (a stand-in for model inference), run in an
OS thread so that the worker keeps serving others meanwhile."""

from flask import Blueprint, abort, jsonify, request

from app import tasks
from deploy import in_os_thread

bp = Blueprint("cpu", __name__)


@bp.get("/cpu")
def cpu():
    rounds = request.args.get("rounds", "200000")
    if not rounds.isdigit() or not 1 <= int(rounds) <= tasks.MAX_DIGEST_ROUNDS:
        abort(400, description=f"rounds must be a whole number from 1 to {tasks.MAX_DIGEST_ROUNDS}")
    return jsonify(in_os_thread(tasks.digest, int(rounds)))
