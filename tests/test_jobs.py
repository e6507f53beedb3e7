"""The job queue: its API with Flask's test client, real consumer processes
(`python -m deploy.jobs.consumer`), and the records' status diagram on SQLite and on a real
Redis server."""

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
import redis
from flask import Flask

from app import create_app
from deploy import init_app
from deploy.jobs.queue import JobNotCancelable, JobQueue
from deploy.jobs.registry import TaskRegistry
from deploy.settings import Settings
from tests import figures
from tests.conftest import ROOT
from tests.containers import TERMINAL, JobsClient, free_port, wait_until


@pytest.fixture
def consumer(tmp_path):
    """Starts `python -m deploy.jobs.consumer` with the test's environment; stops it after the test."""
    started = []

    def start(**environment):
        env = {**os.environ, "GRACEFUL_TIMEOUT": "1", **environment}
        log = open(tmp_path / f"consumer-{len(started)}.log", "w")
        process = subprocess.Popen([sys.executable, "-m", "deploy.jobs.consumer"], cwd=ROOT, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
        process.log_path = log.name
        started.append(process)
        return process

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=15)


@pytest.fixture
def jobs_client(client):
    return JobsClient.of_flask(client)


def test_a_job_runs_and_its_result_is_kept(client, jobs_client, consumer):
    consumer()
    response = client.post("/jobs", json={"task": "job2", "args": {"arg1": "hello", "arg2": "123", "seconds": 0.1}},
                           headers={"X-Request-ID": "f" * 32})
    assert response.status_code == 202
    job = response.json
    assert response.headers["Location"] == f"/jobs/{job['id']}"
    assert job["status"] == "queued" and job["args"] == {"arg1": "hello", "arg2": "123", "seconds": 0.1}
    assert job["request_id"] == "f" * 32  # the request that queued it, as nginx named it
    record = jobs_client.wait_for_status(job["id"])
    assert record["status"] == "done"
    assert record["result"] == {"task": "job2", "arg1": "hello", "arg2": "123", "seconds": 0.1}
    assert record["created_at"] <= record["started_at"] <= record["finished_at"]


def test_the_cpu_bound_task_runs_as_a_job_in_every_worker_process(jobs_client, consumer):
    # Forked while the consumer's other thread uses the store: no worker may inherit its lock.
    process = consumer(JOB_WORKER_TYPE="process", JOB_WORKERS="4")
    jobs = [jobs_client.submit("digest", rounds=1000)["id"] for _ in range(8)]
    for job in jobs:
        record = jobs_client.wait_for_status(job)
        assert record["status"] == "done"
        assert len(record["result"]["digest"]) == 64
    process.terminate()
    assert process.wait(timeout=10) == 0  # and it stops, its workers too


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


def test_every_error_of_the_jobs_api_is_json_in_an_app_with_html_errors():
    app = Flask("html_app")
    init_app(app)
    client = app.test_client()
    for method, path, status in [("PUT", "/jobs", 405), ("POST", "/jobs/0b7e1f4c-3c44-4f9a-9a51-2a8d7b0c9e11", 405),
                                 ("GET", "/jobs/a/b", 404), ("GET", "/jobs/nope", 404)]:
        response = client.open(path, method=method)
        assert (response.status_code, response.is_json) == (status, True), (method, path)
    assert not client.get("/elsewhere").is_json  # the app's own errors stay the app's


def test_a_queued_job_can_be_canceled_and_never_runs(client, jobs_client, consumer):
    job = jobs_client.submit("job1", seconds=0)
    canceled = client.delete(f"/jobs/{job['id']}")
    assert (canceled.status_code, canceled.json["status"]) == (200, "canceled")
    consumer()
    marker = jobs_client.submit("job1", seconds=0)  # runs after the canceled one would have
    jobs_client.wait_for_status(marker["id"], {"done"})
    assert jobs_client.record(job["id"])["status"] == "canceled"
    again = client.delete(f"/jobs/{job['id']}")
    assert again.status_code == 409 and "only a queued job can be canceled" in again.json["message"]


def test_a_full_queue_is_503_with_retry_after(monkeypatch):
    monkeypatch.setenv("JOB_QUEUE_MAX", "2")
    client = JobsClient.of_flask(create_app().test_client())
    client.submit("job1", seconds=0)
    client.submit("job1", seconds=0)
    status, body = client.request("POST", "/jobs", {"task": "job1", "args": {"seconds": 0}})
    assert status == 503
    assert "2 jobs are already waiting" in body["message"]


def test_a_graceful_stop_interrupts_a_job_that_outlasts_the_timeout(jobs_client, consumer):
    process = consumer()  # GRACEFUL_TIMEOUT=1
    job = jobs_client.submit("job1", seconds=5)
    jobs_client.wait_for_status(job["id"], {"running"})
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0
    record = jobs_client.record(job["id"])
    assert record["status"] == "interrupted"
    assert record["error"] == "the consumer stopped while the job was running"


def test_a_job_of_a_killed_consumer_is_ended_when_its_lease_expires(jobs_client, consumer):
    process = consumer(JOB_LEASE_SECONDS="3")
    job = jobs_client.submit("job1", seconds=5)
    jobs_client.wait_for_status(job["id"], {"running"})
    process.kill()
    process.wait(timeout=5)
    killed_at = time.monotonic()
    assert jobs_client.record(job["id"])["status"] == "running"
    consumer(JOB_LEASE_SECONDS="3")
    record = jobs_client.wait_for_status(job["id"], TERMINAL, deadline=10)
    assert record["status"] == "interrupted"
    assert "was lost (no lease renewal for 3 s)" in record["error"]
    assert time.monotonic() - killed_at < 3 + 2  # the lease, plus the reaper's period and a margin


def test_a_running_job_keeps_its_lease_while_it_runs(jobs_client, consumer):
    consumer(JOB_LEASE_SECONDS="3")
    job = jobs_client.submit("job1", seconds=4.5)  # longer than the lease: renewed meanwhile
    assert jobs_client.wait_for_status(job["id"], TERMINAL, deadline=15)["status"] == "done"


def test_a_job_no_consumer_knows_fails_within_seconds_with_the_reason(jobs_client, consumer):
    consumer(JOB_MODULES="json")  # a consumer without the example's tasks
    record = jobs_client.wait_for_status(jobs_client.submit("job1", seconds=0)["id"], TERMINAL, deadline=5)
    assert record["status"] == "failed"
    assert "no task 'app.tasks.job1' in this consumer" in record["error"]
    assert "is its module in JOB_MODULES?" in record["error"]


def test_a_consumer_whose_task_module_cannot_be_imported_stops_naming_it(consumer):
    process = consumer(JOB_MODULES="app.tasks,no_such_tasks")
    assert process.wait(timeout=15) == 2
    assert ("configuration error: JOB_MODULES: cannot import 'no_such_tasks': "
            "ModuleNotFoundError: No module named 'no_such_tasks'") in open(process.log_path).read()


def test_jobs_of_a_task_registered_after_the_queue_was_made_are_accepted_and_run(consumer, tmp_path):
    late_tasks = tmp_path / "late_tasks.py"
    late_tasks.write_text("from deploy.jobs import task\n\n@task()\ndef late(word: str) -> str:\n    return word * 2\n")
    sys.path.insert(0, str(tmp_path))
    try:
        app = Flask("late")
        init_app(app)
        client = JobsClient.of_flask(app.test_client())
        client.request("GET", "/jobs/0b7e1f4c-3c44-4f9a-9a51-2a8d7b0c9e11", None)  # the queue is made now
        import late_tasks  # noqa: F401, PLC0415  (registers `late` only now)
        job = client.submit("late", word="ab")
        consumer(JOB_MODULES="late_tasks", PYTHONPATH=f"{tmp_path}:{ROOT}")
        assert client.wait_for_status(job["id"])["result"] == "abab"
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("late_tasks", None)


def test_a_task_must_annotate_its_arguments():
    with pytest.raises(TypeError, match=r"untyped\(value\): annotate it with str, int, float or bool"):
        @TaskRegistry().task()
        def untyped(value):
            pass


def test_job_arguments_named_like_huey_options_reach_the_task():
    registry = TaskRegistry()

    @registry.task()
    def options(id: str, retries: int, eta: str) -> list:
        return [id, retries, eta]

    queue = JobQueue(Settings.from_env(), registry)
    job = queue.submit(*registry.validate("options", {"id": "x", "retries": 7, "eta": "soon"}, {}))
    queue.huey.execute(queue.huey.dequeue())
    assert queue.record(job["id"])["result"] == ["x", 7, "soon"]


# --- The records' status diagram, on SQLite and on a real Redis ----------------------------

@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    """Debian's redis-server on a free loopback port, for the Redis storage."""
    if not shutil.which("redis-server"):
        pytest.fail("the Redis cases need redis-server: apt-get install redis-server")
    port = free_port()
    folder = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--dir", str(folder)], stdout=subprocess.DEVNULL)
    try:
        wait_until(lambda: redis.Redis(port=port).ping(), 10, "redis-server answering")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(params=["sqlite", "redis"])
def storage_environment(request, monkeypatch):
    """The queue's storage for the test: SQLite (the default) or a real Redis, emptied first."""
    if request.param == "redis":
        url = request.getfixturevalue("redis_server")
        redis.Redis.from_url(url).flushdb()
        monkeypatch.setenv("REDIS_URL", url)
    return request.param


@pytest.fixture
def flaky_queue(storage_environment):
    """A queue with one task, `flaky`, that fails its first `fail_times` attempts."""
    registry = TaskRegistry()
    calls = []

    @registry.task(retries=1)
    def flaky(fail_times: int) -> str:
        calls.append(1)
        if len(calls) <= fail_times:
            raise RuntimeError(f"attempt {len(calls)} failed")
        return "ok"

    queue = JobQueue(Settings.from_env(), registry)
    queue.calls = calls
    return queue


def run_next(queue: JobQueue) -> None:
    queue.huey.execute(queue.huey.dequeue())


def test_a_failing_task_fails_with_its_error_and_is_retried_when_it_declares_retries(flaky_queue):
    queue, registry = flaky_queue, flaky_queue.registry
    retried = queue.submit(*registry.validate("flaky", {"fail_times": 1}, {}))
    run_next(queue)
    assert queue.record(retried["id"])["status"] == "queued"  # handed back for its retry
    assert queue.record(retried["id"])["attempt"] == 2
    run_next(queue)
    assert queue.record(retried["id"])["status"] == "done"
    assert queue.record(retried["id"])["result"] == "ok"

    queue.calls.clear()
    failed = queue.submit(*registry.validate("flaky", {"fail_times": 5}, {}))
    run_next(queue)
    run_next(queue)
    record = queue.record(failed["id"])
    assert record["status"] == "failed"
    assert record["error"] == "RuntimeError: attempt 2 failed"


def test_a_lost_job_is_queued_again_while_its_task_has_retries_then_interrupted(flaky_queue):
    queue, registry = flaky_queue, flaky_queue.registry
    job = queue.submit(*registry.validate("flaky", {"fail_times": 0}, {}))
    for attempt, status in ((1, "queued"), (2, "interrupted")):
        message = queue.huey.dequeue()
        queue.huey._run_pre_execute(message)  # a consumer starts it, holds its lease, then is lost
        queue._release_lease(message.id)
        assert queue.record(job["id"])["status"] == "running"
        assert queue.end_lost_job(job["id"], "lost", only_if_expired=False) == status
        assert queue.record(job["id"])["attempt"] == attempt + (status == "queued")
    assert queue.huey.pending_count() == 0  # the second loss used the last retry: nothing queued
    assert queue.record(job["id"])["error"] == "lost"


def test_an_expired_lease_is_ended_by_any_consumer_and_a_live_one_is_not(flaky_queue, monkeypatch):
    queue, registry = flaky_queue, flaky_queue.registry
    monkeypatch.setattr(queue, "lease_seconds", 0.2)
    job = queue.submit(*registry.validate("flaky", {"fail_times": 0}, {}))
    message = queue.huey.dequeue()
    queue.huey._run_pre_execute(message)  # a consumer starts it and holds its lease for 0.2 s
    queue._release_lease(message.id)      # ... and renews it by hand below
    assert queue.end_expired_leases() == []
    queue.records.renew([job["id"]], queue.records.now() + 60)
    time.sleep(0.3)
    assert queue.end_expired_leases() == []  # renewed
    queue.records.renew([job["id"]], queue.records.now() - 1)
    assert queue.end_expired_leases() == [job["id"]]
    assert queue.record(job["id"])["status"] == "queued"  # retried: its task declares one retry
    assert queue.end_expired_leases() == []  # ended once


def test_finished_records_expire_after_the_ttl_and_live_ones_never(flaky_queue, monkeypatch):
    queue, registry = flaky_queue, flaky_queue.registry
    monkeypatch.setattr(queue.records, "result_ttl", 1)
    done = queue.submit(*registry.validate("flaky", {"fail_times": 0}, {}))
    run_next(queue)
    waiting = queue.submit(*registry.validate("flaky", {"fail_times": 0}, {}))
    assert queue.record(done["id"])["status"] == "done"

    def expired():
        queue.records.delete_expired(queue.records.now())  # the consumer's cleanup (Redis expires by itself)
        return queue.record(done["id"]) is None
    wait_until(expired, 5, "the finished record deleted after its TTL")
    assert queue.record(waiting["id"])["status"] == "queued"


def test_counts_of_live_jobs_by_task_and_the_oldest_queued(flaky_queue):
    queue, registry = flaky_queue, flaky_queue.registry
    assert queue.records.live_counts() == {} or all(n == 0 for n in queue.records.live_counts().values())
    assert queue.records.oldest_queued() is None
    first = queue.submit(*registry.validate("flaky", {"fail_times": 0}, {}))
    queue.submit(*registry.validate("flaky", {"fail_times": 0}, {}))
    message = queue.huey.dequeue()
    queue.huey._run_pre_execute(message)
    queue._release_lease(message.id)
    counts = {key: n for key, n in queue.records.live_counts().items() if n}
    assert counts == {("queued", "flaky"): 1, ("running", "flaky"): 1}
    assert queue.records.now() - queue.records.oldest_queued() < 5
    assert queue.record(first["id"])["status"] == "running"


def test_a_cancel_racing_a_consumer_start_leaves_a_possible_record_every_time(storage_environment):
    # The web side and the consumer side each with their own connection to the store, as in
    # two processes; each round releases both at once.
    registry = TaskRegistry()
    ran = []

    @registry.task()
    def work(n: int) -> int:
        ran.append(n)
        return n

    web, consumer = JobQueue(Settings.from_env(), registry), JobQueue(Settings.from_env(), registry)
    rounds, outcomes = 60, Counter()
    for n in range(rounds):
        job = web.submit(*registry.validate("work", {"n": n}, {}))
        message = consumer.huey.dequeue()
        both_ready = threading.Barrier(2)
        canceled = {}

        def cancel(job_id, both_ready, canceled):
            both_ready.wait()
            time.sleep(random.uniform(0, 0.003))  # either side may win the round
            try:
                canceled["record"] = web.cancel(job_id)
            except JobNotCancelable:
                canceled["record"] = None

        racer = threading.Thread(target=cancel, args=(job["id"], both_ready, canceled))
        racer.start()
        both_ready.wait()
        time.sleep(random.uniform(0, 0.003))
        consumer.huey.execute(message)
        racer.join()
        record = web.record(job["id"])
        if canceled["record"] is not None:  # the cancel won: the job never ran
            assert (record["status"], n in ran, record["started_at"]) == ("canceled", False, None), record
        else:  # the start won: the cancel was refused, the job ran once and is done
            assert (record["status"], ran.count(n), record["result"]) == ("done", 1, n), record
        outcomes[record["status"]] += 1
    assert set(outcomes) == {"canceled", "done"}, outcomes  # both sides won rounds: they raced
    figures.record(f"cancel racing a consumer's start, {storage_environment}", rounds, 0,
                   f"{outcomes['canceled']} canceled and never run, {outcomes['done']} refused (409) and run once: "
                   "no other record")


def test_the_consumer_imports_neither_the_web_server_nor_flask():
    # Each module a resident process imports is memory it holds for good (issue 12's budget).
    imported = subprocess.run(
        [sys.executable, "-c", "import sys, deploy.jobs.consumer; "
                               "print(' '.join(m for m in ('gunicorn', 'flask') if m in sys.modules))"],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert imported == []
