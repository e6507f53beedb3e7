"""/compute: a millisecond or two of Python computing (n=20000, on server cores of today), answered
as JSON: a stand-in for light work in a request (validating, scoring a small payload). GET
takes `n` from the query, POST from a JSON body: {"n": 20000}. The benchmark's mixed
workload and its POST case use it, with the `n` that takes 1 ms on the machine it runs on."""

from flask import Blueprint, abort, jsonify, request

bp = Blueprint("compute", __name__)

MAX_N = 1_000_000


def sum_of_squares(n: int) -> int:
    return sum(i * i for i in range(n))


@bp.route("/compute", methods=["GET", "POST"])
def compute():
    if request.method == "GET":
        raw = request.args.get("n", "20000")
    else:
        body = request.get_json(silent=True)
        raw = body.get("n") if isinstance(body, dict) else None
    if isinstance(raw, str) and raw.isdigit():
        raw = int(raw)
    if not isinstance(raw, int) or isinstance(raw, bool) or not 1 <= raw <= MAX_N:
        abort(400, description=f"n must be a whole number from 1 to {MAX_N}")
    return jsonify(n=raw, sum_of_squares=sum_of_squares(raw))
