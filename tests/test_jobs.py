"""The job queue API with Flask's test client and a real huey consumer process on SQLite."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT

TERMINAL = {"done", "failed", "interrupted", "canceled"}


@pytest.fixture
def consumer(settings, tmp_path):
    """Starts `python -m app.worker` on the test's SQLite queue; stops it after the test."""
    started = []

    def start(**environment):
        env = {**os.environ, "JOB_DATABASE": settings.job_database, "GRACEFUL_TIMEOUT": "1", **environment}
        log = open(tmp_path / f"consumer-{len(started)}.log", "w")
        process = subprocess.Popen([sys.executable, "-m", "app.worker"], cwd=ROOT, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
        started.append(process)
        return process

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=15)


def wait_for_status(client, job_id, statuses, deadline=15):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        record = client.get(f"/jobs/{job_id}").json
        if record["status"] in statuses:
            return record
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {record['status']} after {deadline} s")


def submit(client, task, **args):
    return client.post("/jobs", json={"task": task, "args": args})


def test_a_job_runs_and_its_result_is_kept(client, consumer):
    consumer()
    response = submit(client, "job2", arg1="hello", arg2="123", seconds=0.1)
    assert response.status_code == 202
    job = response.json
    assert response.headers["Location"] == f"/jobs/{job['id']}"
    assert job["status"] == "queued" and job["args"] == {"arg1": "hello", "arg2": "123", "seconds": 0.1}
    record = wait_for_status(client, job["id"], TERMINAL)
    assert record["status"] == "done"
    assert record["result"] == {"task": "job2", "arg1": "hello", "arg2": "123", "seconds": 0.1}
    assert record["created_at"] <= record["started_at"] <= record["finished_at"]


def test_the_cpu_bound_task_runs_as_a_job(client, consumer):
    consumer(JOB_WORKER_TYPE="process")
    job = submit(client, "digest", rounds=1000).json
    record = wait_for_status(client, job["id"], TERMINAL)
    assert record["status"] == "done"
    assert len(record["result"]["digest"]) == 64


@pytest.mark.parametrize("body, message", [
    ({"task": "nope"}, "unknown task 'nope'; tasks: digest, job1, job2"),
    ({"args": {}}, "unknown task None"),
    ({"task": "job2", "args": {"arg1": "a"}}, "missing argument arg2; job2 takes arg1 (a string), arg2 (a string), seconds (a number, optional)"),
    ({"task": "job1", "args": {"sekonds": 1}}, "unknown argument sekonds; job1 takes seconds (a number, optional)"),
    ({"task": "job1", "args": {"seconds": "1"}}, "seconds must be a number"),
    ({"task": "job1", "args": {"seconds": True}}, "seconds must be a number"),
    ({"task": "job1", "args": {"seconds": -1}}, "seconds must be a number from 0 to 5"),
    ({"task": "job1", "args": {"seconds": 1e9}}, "seconds must be a number from 0 to 5"),
    ({"task": "digest", "args": {"rounds": 1.5}}, "rounds must be a whole number"),
    ({"task": "digest", "args": {"rounds": 0}}, "rounds must be a whole number from 1 to 5000000"),
    ({"task": "job1", "args": [1]}, "args must be a JSON object"),
    ([1, 2], "the body must be a JSON object"),
])
def test_bad_requests_are_400_naming_what_is_accepted(client, body, message):
    response = client.post("/jobs", json=body)
    assert response.status_code == 400
    assert response.json["message"].startswith(message)


def test_a_body_that_is_not_json_is_400(client):
    for data, content_type in [("task=job1", "application/x-www-form-urlencoded"),
                               ("{not json", "application/json"), ("", "application/json")]:
        response = client.post("/jobs", data=data, content_type=content_type)
        assert response.status_code == 400
        assert "JSON object" in response.json["message"]


def test_unknown_ids_are_404(client):
    for job_id in ("0b7e1f4c-3c44-4f9a-9a51-2a8d7b0c9e11", "not-an-id", "../../etc/passwd"):
        assert client.get(f"/jobs/{job_id}").status_code == 404
        assert client.delete(f"/jobs/{job_id}").status_code == 404


def test_a_queued_job_can_be_canceled_and_never_runs(client, consumer):
    job = submit(client, "job1", seconds=0).json
    canceled = client.delete(f"/jobs/{job['id']}")
    assert (canceled.status_code, canceled.json["status"]) == (200, "canceled")
    consumer()
    marker = submit(client, "job1", seconds=0).json  # runs after the canceled one would have
    wait_for_status(client, marker["id"], {"done"})
    assert client.get(f"/jobs/{job['id']}").json["status"] == "canceled"
    again = client.delete(f"/jobs/{job['id']}")
    assert again.status_code == 409 and "only a queued job can be canceled" in again.json["message"]


def test_a_full_queue_is_503_with_retry_after(settings):
    import dataclasses
    from app import create_app
    client = create_app(dataclasses.replace(settings, job_queue_max=2)).test_client()
    assert submit(client, "job1", seconds=0).status_code == 202
    assert submit(client, "job1", seconds=0).status_code == 202
    full = submit(client, "job1", seconds=0)
    assert full.status_code == 503
    assert full.headers["Retry-After"] == "10"
    assert "2 jobs are already waiting" in full.json["message"]


def test_a_graceful_stop_interrupts_a_job_that_outlasts_the_timeout(client, consumer):
    process = consumer()  # GRACEFUL_TIMEOUT=1
    job = submit(client, "job1", seconds=5).json
    wait_for_status(client, job["id"], {"running"})
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0
    record = client.get(f"/jobs/{job['id']}").json
    assert record["status"] == "interrupted"


def test_a_job_of_a_killed_consumer_is_marked_interrupted_by_the_next(client, consumer):
    process = consumer()
    job = submit(client, "job1", seconds=5).json
    wait_for_status(client, job["id"], {"running"})
    process.kill()
    process.wait(timeout=5)
    assert client.get(f"/jobs/{job['id']}").json["status"] == "running"
    consumer()
    record = wait_for_status(client, job["id"], TERMINAL, deadline=10)
    assert record["status"] == "interrupted"
    assert "died" in record["error"]


def test_a_failing_task_is_failed_with_its_error_and_retried_when_it_declares_retries(settings):
    from app.job_queue import JobQueue, TaskRegistry
    registry = TaskRegistry()
    calls = []

    @registry.task(retries=1)
    def flaky(fail_times: int) -> str:
        calls.append(1)
        if len(calls) <= fail_times:
            raise RuntimeError(f"attempt {len(calls)} failed")
        return "ok"

    queue = JobQueue(settings, registry)

    def run_next():
        queue.huey.execute(queue.huey.dequeue())

    retried = queue.submit(*registry.validate("flaky", {"fail_times": 1}, {}))
    run_next()
    assert queue.record(retried["id"])["status"] == "queued"  # handed back for its retry
    assert queue.record(retried["id"])["attempt"] == 2
    run_next()
    assert queue.record(retried["id"])["status"] == "done"
    assert queue.record(retried["id"])["result"] == "ok"

    calls.clear()
    failed = queue.submit(*registry.validate("flaky", {"fail_times": 5}, {}))
    run_next()
    run_next()
    record = queue.record(failed["id"])
    assert record["status"] == "failed"
    assert record["error"] == "RuntimeError: attempt 2 failed"


def test_a_task_must_annotate_its_arguments():
    from app.job_queue import TaskRegistry
    with pytest.raises(TypeError, match=r"untyped\(value\): annotate it with str, int, float or bool"):
        @TaskRegistry().task()
        def untyped(value):
            pass
