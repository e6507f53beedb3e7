"""Tasks for the job tests: the consumer processes of the tests import this module
(JOB_MODULES=tests.job_tasks), and the tests' Flask app too (`jobs_app`)."""

import os
import time
from pathlib import Path

from flask import Flask

from deploy import init_app, progress, task


@task()
def sleepy(seconds: float = 1) -> dict:
    """Waits, as I/O does (under gevent's patching a greenlet switch)."""
    time.sleep(seconds)
    return {"slept": seconds}


@task()
def steps(count: int = 5, pause: float = 0.1) -> str:
    """Reports its progress at each step; a cancel stops it at the next one."""
    for step in range(count):
        progress(step / count, f"step {step + 1} of {count}")
        time.sleep(pause)
    progress(1, "all done")
    return f"{count} steps"


@task()
def spin(seconds: float = 60) -> int:
    """Computes in pure Python and never yields nor reports: only a process worker can stop it."""
    end, turns = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        turns += 1
    return turns


@task(timeout=1)
def overtime(seconds: float = 30, report: bool = False) -> str:
    """Runs past its timeout of 1 s, waiting, or reporting progress as it goes."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if report:
            progress(0.5, "still going")
        time.sleep(0.1)
    return "finished"


@task()
def sized(size: int) -> str:
    return "x" * size


@task()
def unjsonable() -> str:
    return {1, 2}


@task(retries=2, retry_delay=1, retry_backoff=2)
def fails(marker: str, times: int = 99) -> int:
    """Fails its first `times` attempts; `marker` is a file that counts them."""
    path = Path(marker)
    attempts = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(attempts))
    if attempts <= times:
        raise RuntimeError(f"attempt {attempts} failed")
    return attempts


@task(retries=1)
def once_lost(marker: str, seconds: float = 8) -> int:
    """Writes its pid to `marker` and waits: the tests stall or kill its consumer meanwhile."""
    Path(marker).write_text(str(os.getpid()))
    time.sleep(seconds)
    return os.getpid()


def create_app() -> Flask:
    app = Flask("job_tests")
    init_app(app)
    return app
