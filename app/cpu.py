"""CPU-heavy work inside a request, without stalling the worker's event loop.

A gevent worker serves all its requests on one event loop: code that computes for 200 ms
holds every other request of that worker for 200 ms. `in_os_thread` runs such work in a
real OS thread (gevent's threadpool) and lets the loop serve others meanwhile. It helps
where the work releases the GIL, as native code does (hashlib, NumPy, PyTorch inference);
pure-Python loops hold the GIL and belong in the job queue with JOB_WORKER_TYPE=process.
"""

import gevent
from flask import Blueprint, abort, jsonify, request
from gevent import monkey

from app import tasks

bp = Blueprint("cpu", __name__)


def under_gevent() -> bool:
    return monkey.is_module_patched("threading")


def size_threadpool(threads: int) -> None:
    """CPU_THREADS OS threads per worker: more than the CPUs only adds contention."""
    if under_gevent():
        gevent.get_hub().threadpool.maxsize = threads


def in_os_thread(function, *args):
    """`function(*args)` in an OS thread of the hub's threadpool under a gevent worker;
    called directly elsewhere (Flask's test client, a sync worker)."""
    if not under_gevent():
        return function(*args)
    return gevent.get_hub().threadpool.apply(function, args)


@bp.get("/cpu")
def cpu():
    """A stand-in for model inference: GET /cpu?rounds=N runs `digest` in an OS thread."""
    rounds = request.args.get("rounds", "200000")
    if not rounds.isdigit() or not 1 <= int(rounds) <= tasks.MAX_DIGEST_ROUNDS:
        abort(400, description=f"rounds must be a whole number from 1 to {tasks.MAX_DIGEST_ROUNDS}")
    return jsonify(in_os_thread(tasks.digest, int(rounds)))
