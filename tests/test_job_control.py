"""Running jobs under control, with real consumer processes of each worker type: progress,
a cancel while the job runs, a timeout, a cancel racing the job's own end, and a consumer that
stalls past its lease while another takes its job over (fencing)."""

import os
import random
import re
import signal
import time
from pathlib import Path

import pytest

from tests.containers import TERMINAL, wait_until

WORKER_TYPES = ("thread", "greenlet", "process")


def test_progress_is_in_the_record_while_the_job_runs_and_kept_after(tasks_client, consumer):
    consumer(JOB_MODULES="tests.job_tasks")
    job = tasks_client.submit("steps", count=10, pause=0.3)
    running = wait_until(lambda: (record := tasks_client.record(job["id"]))["progress"] and record, 10,
                         "progress in the record")
    assert running["status"] == "running"
    assert 0 <= running["progress"]["fraction"] < 1 and running["progress"]["message"].startswith("step ")
    done = tasks_client.wait_for_status(job["id"], {"done"})
    assert done["progress"] == {"fraction": 1.0, "message": "all done"}


# The task each worker type can be stopped in: a thread at its next progress() call, a greenlet
# at its next gevent switch (a sleep), a process at once, even in a loop that never yields.
STOPPABLE = {"thread": ("steps", {"count": 1000, "pause": 0.1}), "greenlet": ("sleepy", {"seconds": 60}),
             "process": ("spin", {"seconds": 60})}


@pytest.mark.parametrize("worker_type", WORKER_TYPES)
def test_a_running_job_is_canceled_within_seconds_and_its_slot_is_free_again(tasks_client, consumer, worker_type):
    consumer(JOB_MODULES="tests.job_tasks", JOB_WORKER_TYPE=worker_type, JOB_WORKERS="1")
    task, args = STOPPABLE[worker_type]
    job = tasks_client.submit(task, **args)
    tasks_client.wait_for_status(job["id"], {"running"})
    time.sleep(0.5)
    asked = time.monotonic()
    status, record = tasks_client.request("DELETE", f"/jobs/{job['id']}", None)
    assert (status, record["status"]) == (202, "running") and record["cancel_requested_at"]
    record = tasks_client.wait_for_status(job["id"], TERMINAL, deadline=10)
    took = time.monotonic() - asked
    assert (record["status"], record["error"]) == ("canceled", "canceled while it ran")
    assert took < 3, f"canceled after {took:.1f} s"
    # The one worker is free again: the next job runs (a process worker that would not stop is
    # replaced by the consumer).
    assert tasks_client.wait_for_status(tasks_client.submit("sleepy", seconds=0)["id"], deadline=10)["status"] == "done"
    status, again = tasks_client.request("DELETE", f"/jobs/{job['id']}", None)
    assert status == 409


@pytest.mark.parametrize("worker_type", WORKER_TYPES)
def test_a_job_past_its_timeout_fails_saying_so_and_the_next_runs(tasks_client, consumer, worker_type):
    consumer(JOB_MODULES="tests.job_tasks", JOB_WORKER_TYPE=worker_type, JOB_WORKERS="1")
    # A thread is stopped at a progress() call; a greenlet and a process are stopped as they wait.
    job = tasks_client.submit("overtime", seconds=30, report=worker_type == "thread")
    record = tasks_client.wait_for_status(job["id"], TERMINAL, deadline=10)
    assert (record["status"], record["error"]) == ("failed", "timed out after 1 s")
    started, finished = (record[key] for key in ("started_at", "finished_at"))
    assert finished > started
    assert tasks_client.wait_for_status(tasks_client.submit("sleepy", seconds=0)["id"], deadline=10)["status"] == "done"


def test_a_thread_that_runs_past_its_timeout_without_reporting_still_fails_timed_out(tasks_client, consumer):
    consumer(JOB_MODULES="tests.job_tasks")  # thread workers: nothing stops a task that never reports
    record = tasks_client.wait_for_status(tasks_client.submit("overtime", seconds=2)["id"], TERMINAL, deadline=10)
    assert (record["status"], record["error"], record["result"]) == ("failed", "timed out after 1 s", None)


def test_a_cancel_racing_the_job_s_own_end_leaves_one_end(tasks_client, consumer):
    consumer(JOB_MODULES="tests.job_tasks", JOB_WORKERS="2")
    outcomes = []
    for _ in range(25):
        job = tasks_client.submit("steps", count=3, pause=0.1)
        tasks_client.wait_for_status(job["id"], {"running", "done"})
        time.sleep(random.uniform(0.1, 0.5))  # around its end, 0.3 s after it started
        status, _ = tasks_client.request("DELETE", f"/jobs/{job['id']}", None)
        record = tasks_client.wait_for_status(job["id"], TERMINAL, deadline=10)
        if record["status"] == "canceled":
            assert status == 202 and record["error"] == "canceled while it ran" and record["result"] is None
        else:  # it ended first; a cancel asked after its end is refused
            assert record["status"] == "done" and record["result"] == "3 steps" and status in (202, 409)
        outcomes.append(record["status"])
    assert set(outcomes) <= {"done", "canceled"} and len(outcomes) == 25


def test_a_consumer_stalled_past_its_lease_cannot_overwrite_the_attempt_that_replaced_it(tasks_client, consumer,
                                                                                         tmp_path):
    stalled = consumer(JOB_MODULES="tests.job_tasks", JOB_LEASE_SECONDS="3", JOB_WORKERS="1")
    marker = tmp_path / "pid"
    job = tasks_client.submit("once_lost", marker=str(marker), seconds=6)  # retries=1
    first = tasks_client.wait_for_status(job["id"], {"running"})
    assert first["worker"]["pid"] == stalled.pid
    os.kill(stalled.pid, signal.SIGSTOP)  # stalled: no lease renewal, no progress
    try:
        taker = consumer(JOB_MODULES="tests.job_tasks", JOB_LEASE_SECONDS="3", JOB_WORKERS="1")
        second = wait_until(lambda: (record := tasks_client.record(job["id"]))["attempt"] == 2
                            and record["status"] == "running" and record, 15, "attempt 2 running on the other consumer")
        assert second["worker"]["pid"] == taker.pid and second["error"].startswith("attempt 1: its consumer on ")
    finally:
        os.kill(stalled.pid, signal.SIGCONT)  # attempt 1 goes on, ends, and tries to write
    jobs_log = Path(os.environ["STACK_LOG_DIR"]) / "jobs" / "consumer.log"
    refused = re.compile(rf"\[{stalled.pid}\] \[WARNING\] .* job {job['id']}: attempt 1 ended done, but the record is "
                         "running at attempt 2: not written")
    wait_until(lambda: refused.search(jobs_log.read_text()), 15, "the stalled consumer's refused write")
    done = tasks_client.wait_for_status(job["id"], {"done"}, deadline=15)
    assert (done["attempt"], done["result"], done["worker"]["pid"]) == (2, taker.pid, taker.pid)
