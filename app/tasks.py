"""The example's work: stand-ins for a batch job that waits on I/O and for model inference.

Under gunicorn's gevent worker `time.sleep` yields to the event loop, so one worker serves
other requests while job1 and job2 wait. `digest` computes: in a request it must run in an
OS thread (app/cpu.py: in_os_thread); in the job queue, a process or thread consumer runs it.
The three are also registered as durable jobs (POST /jobs); as jobs, job1 and job2 report
their progress, and stop there when canceled. `nightly_report` is a scheduled task.
"""

import hashlib
import time
from collections.abc import Mapping
from datetime import UTC, datetime

from deploy import progress, task

PROGRESS_EVERY = 0.5  # seconds between two progress reports of a waiting job

MAX_DIGEST_ROUNDS = 5_000_000


def check_seconds(args: dict, config: Mapping) -> None:
    limit = config["JOB_MAX_SECONDS"]
    if "seconds" in args and not 0 <= args["seconds"] <= limit:
        raise ValueError(f"seconds must be a number from 0 to {limit:g}")


def check_rounds(args: dict, config: Mapping) -> None:
    if not 1 <= args["rounds"] <= MAX_DIGEST_ROUNDS:
        raise ValueError(f"rounds must be a whole number from 1 to {MAX_DIGEST_ROUNDS}")


def wait(seconds: float) -> None:
    """Wait `seconds`, reporting the progress (a no-op outside a job)."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        progress(1 - left / seconds, f"{left:.1f} s left")
        time.sleep(min(left, PROGRESS_EVERY))
    progress(1, f"waited {seconds:g} s")


@task(check=check_seconds)
def job1(seconds: float = 10) -> dict:
    wait(seconds)
    return {"task": "job1", "seconds": seconds}


@task(check=check_seconds)
def job2(arg1: str, arg2: str, seconds: float = 5) -> dict:
    wait(seconds)
    return {"task": "job2", "arg1": arg1, "arg2": arg2, "seconds": seconds}


@task(check=check_rounds)
def digest(rounds: int) -> dict:
    """CPU-bound: PBKDF2-SHA256 for `rounds` iterations (OpenSSL, outside the GIL)."""
    key = hashlib.pbkdf2_hmac("sha256", b"flask-stack", b"example-salt", rounds)
    return {"task": "digest", "rounds": rounds, "digest": key.hex()}


@task(cron="0 3 * * *")
def nightly_report() -> dict:
    """Every night at 3 (SCHEDULE_TIMEZONE), once however many consumers run."""
    return {"task": "nightly_report", "at": datetime.now(UTC).isoformat(timespec="seconds")}
