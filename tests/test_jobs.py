"""The job queue's API with Flask's test client and real consumer processes
(`python -m deploy.jobs.consumer`), on SQLite and on a real Redis server: submitting,
listing, waiting, canceling, retrying, idempotency, auth, and the bad requests."""

import base64
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask

from app import create_app
from deploy import init_app
from deploy.jobs.registry import TaskDefinitionError, TaskRegistry
from tests import job_tasks
from tests.containers import TERMINAL, JobsClient, wait_until
from tests.support import ROOT


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


def test_greenlet_workers_run_waiting_jobs_side_by_side(tasks_client, consumer):
    consumer(JOB_MODULES="tests.job_tasks", JOB_WORKER_TYPE="greenlet", JOB_WORKERS="4")
    jobs = [tasks_client.submit("sleepy", seconds=2)["id"] for _ in range(4)]
    records = [tasks_client.wait_for_status(job, deadline=30) for job in jobs]
    assert {record["status"] for record in records} == {"done"}
    starts = sorted(datetime.fromisoformat(record["started_at"]) for record in records)
    ends = sorted(datetime.fromisoformat(record["finished_at"]) for record in records)
    assert ends[0] > starts[-1], "the four waits overlapped in one process (gevent patched the consumer)"


@pytest.mark.parametrize("body, message", [
    ({"task": "nope"}, "unknown task 'nope'; tasks: "),  # then the registered ones
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
    ({"task": "job1", "when": 5}, "unknown field 'when'; the body takes task, args, delay, run_at"),
    ({"task": "job1", "delay": -1}, "delay must be a number of seconds from 0 to 31622400"),
    ({"task": "job1", "delay": "soon"}, "delay must be a number of seconds"),
    ({"task": "job1", "delay": 1, "run_at": "2030-01-01T00:00:00Z"}, "give delay or run_at, not both"),
    ({"task": "job1", "run_at": "2030-01-01T00:00:00"}, "run_at must be an ISO 8601 time with its offset"),
    ({"task": "job1", "run_at": "tomorrow"}, "run_at must be an ISO 8601 time with its offset"),
    ({"task": "job1", "run_at": "2999-01-01T00:00:00Z"}, "run_at must be within 366 days"),
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


@pytest.mark.parametrize("query, message", [
    ("status=lost", "status must be one of scheduled, queued, running, done, failed, interrupted, canceled"),
    ("limit=0", "limit must be a whole number from 1 to 500"),
    ("limit=501", "limit must be a whole number from 1 to 500"),
    ("cursor=bm9wZQ", "cursor 'bm9wZQ' is not one that GET /jobs gave"),
    ("page=2", "unknown query argument 'page'; this takes status, task, limit, cursor"),
])
def test_bad_listing_queries_are_400(client, query, message):
    response = client.get(f"/jobs?{query}")
    assert (response.status_code, response.json["message"]) == (400, message)


def test_unknown_ids_are_404(client):
    for job_id in ("0b7e1f4c-3c44-4f9a-9a51-2a8d7b0c9e11", "not-an-id", "../../etc/passwd"):
        assert client.get(f"/jobs/{job_id}").status_code == 404
        assert client.delete(f"/jobs/{job_id}").status_code == 404
        assert client.post(f"/jobs/{job_id}/retry").status_code == 404


def test_every_error_of_the_jobs_api_is_json_in_an_app_with_html_errors():
    app = Flask("html_app")
    init_app(app)
    client = app.test_client()
    for method, path, status in [("PUT", "/jobs", 405), ("POST", "/jobs/0b7e1f4c-3c44-4f9a-9a51-2a8d7b0c9e11", 405),
                                 ("GET", "/jobs/a/b", 404), ("GET", "/jobs/nope", 404),
                                 ("GET", "/jobs/nope?wait=1", 404), ("GET", "/jobs/schedules?x=1", 400)]:
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
    assert again.status_code == 409 and again.json["message"] == f"job {job['id']} is canceled: it has finished"


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
    consumer(JOB_LEASE_SECONDS="3")  # started before the kill, so that its start-up is not timed
    process.kill()
    process.wait(timeout=5)
    killed_at = time.monotonic()
    assert jobs_client.record(job["id"])["status"] == "running"
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


@pytest.mark.parametrize("options, message", [
    ({"retries": -1}, "task work: retries=-1: expected a whole number, at least 0"),
    ({"retry_backoff": 0.5}, "task work: retry_backoff=0.5: expected a number, at least 1"),
    ({"timeout": 0}, "task work: timeout=0: expected a number of seconds above 0"),
    ({"timeout": True}, "task work: timeout=True: expected a number of seconds above 0"),
])
def test_a_task_defined_wrongly_is_refused_naming_it(options, message):
    with pytest.raises(TaskDefinitionError) as refused:
        @TaskRegistry().task(**options)
        def work(value: int = 1):
            pass
    assert str(refused.value) == message


def test_a_task_must_annotate_its_arguments():
    with pytest.raises(TaskDefinitionError, match=r"^task untyped: untyped\(value\): annotate it with str, int, "):
        @TaskRegistry().task()
        def untyped(value):
            pass


def test_the_consumer_imports_neither_the_web_server_nor_flask():
    # Each module a resident process imports is memory it holds for good (the idle budget).
    imported = subprocess.run(
        [sys.executable, "-c", "import sys, deploy.jobs.consumer, deploy.jobs.scheduling, deploy.jobs.queue; "
                               "print(' '.join(m for m in ('gunicorn', 'flask') if m in sys.modules))"],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert imported == []


# --- Listing ---------------------------------------------------------------------------------

@pytest.mark.usefixtures("storage_environment")
def test_the_listing_is_newest_first_and_filters_by_status_and_task(tasks_client):
    made = [tasks_client.submit("sleepy", seconds=0)["id"] for _ in range(3)]
    made += [tasks_client.submit("sized", size=1)["id"] for _ in range(2)]
    status, canceled = tasks_client.request("DELETE", f"/jobs/{made[1]}", None)
    assert status == 200
    status, page = tasks_client.request("GET", "/jobs", None)
    assert status == 200 and page["next"] is None
    assert [job["id"] for job in page["jobs"]] == made[::-1]
    assert [job["id"] for job in tasks_client.request("GET", "/jobs?task=sized", None)[1]["jobs"]] == made[:2:-1]
    assert [job["id"] for job in tasks_client.request("GET", "/jobs?status=canceled", None)[1]["jobs"]] == [made[1]]
    both = tasks_client.request("GET", "/jobs?status=queued&task=sleepy", None)[1]["jobs"]
    assert [job["id"] for job in both] == [made[2], made[0]]


@pytest.mark.usefixtures("storage_environment")
def test_pages_never_repeat_or_skip_a_job_while_others_are_added(tasks_client):
    made = [tasks_client.submit("sleepy", seconds=0)["id"] for _ in range(25)]
    seen, cursor, added = [], None, []
    while True:
        status, page = tasks_client.request("GET", "/jobs?limit=4" + (f"&cursor={cursor}" if cursor else ""), None)
        assert status == 200
        seen += [job["id"] for job in page["jobs"]]
        added.append(tasks_client.submit("sleepy", seconds=0)["id"])  # newer than every page: never in them
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == made[::-1]
    assert not set(added) & set(seen)


# --- Later, waiting, retrying, idempotency -----------------------------------------------------

def test_a_delayed_job_is_scheduled_then_queued_at_its_time_and_runs(tasks_client, consumer):
    consumer(JOB_MODULES="tests.job_tasks")
    job = tasks_client.submit_body({"task": "sleepy", "args": {"seconds": 0}, "delay": 2})
    assert job["status"] == "scheduled"
    delay = datetime.fromisoformat(job["run_at"]) - datetime.fromisoformat(job["created_at"])
    assert abs(delay - timedelta(seconds=2)) <= timedelta(milliseconds=1)  # each time is to the millisecond
    time.sleep(1)
    assert tasks_client.record(job["id"])["status"] == "scheduled"
    record = tasks_client.wait_for_status(job["id"], {"done"}, deadline=10)
    assert datetime.fromisoformat(record["started_at"]) >= datetime.fromisoformat(job["run_at"])

    at = (datetime.now(UTC) + timedelta(seconds=60)).replace(microsecond=0).isoformat()
    later = tasks_client.submit_body({"task": "sleepy", "args": {"seconds": 0}, "run_at": at})
    assert later["status"] == "scheduled" and datetime.fromisoformat(later["run_at"]) == datetime.fromisoformat(at)
    status, canceled = tasks_client.request("DELETE", f"/jobs/{later['id']}", None)
    assert (status, canceled["status"]) == (200, "canceled")


def test_a_wait_answers_when_the_job_ends_or_when_its_time_is_up(tasks_client, consumer):
    consumer(JOB_MODULES="tests.job_tasks")
    job = tasks_client.submit("sleepy", seconds=1)
    started = time.monotonic()
    status, record = tasks_client.request("GET", f"/jobs/{job['id']}?wait=20", None)
    assert (status, record["status"]) == (200, "done")
    assert time.monotonic() - started < 10  # the consumer's start and the job's 1 s, not the 20 s
    long_job = tasks_client.submit("sleepy", seconds=30)
    started = time.monotonic()
    status, record = tasks_client.request("GET", f"/jobs/{long_job['id']}?wait=1.5", None)
    assert status == 200 and record["status"] in ("queued", "running")
    assert 1.5 <= time.monotonic() - started < 3
    for bad in ("61", "-1", "soon"):
        status, body = tasks_client.request("GET", f"/jobs/{long_job['id']}?wait={bad}", None)
        assert (status, body["message"]) == (400, "wait must be a number of seconds from 0 to 60")


@pytest.mark.usefixtures("storage_environment")
def test_a_wait_outlives_a_consumer_restart(tasks_client, consumer):
    first = consumer(JOB_MODULES="tests.job_tasks", JOB_LEASE_SECONDS="3")
    job = tasks_client.submit("sleepy", seconds=30)
    tasks_client.wait_for_status(job["id"], {"running"})
    answer = {}
    waiting = threading.Thread(target=lambda: answer.update(
        zip(("status", "record"), tasks_client.request("GET", f"/jobs/{job['id']}?wait=30", None), strict=True)))
    waiting.start()
    first.kill()
    first.wait(timeout=5)
    consumer(JOB_MODULES="tests.job_tasks", JOB_LEASE_SECONDS="3")  # ends the lost job, within its lease
    waiting.join(timeout=30)
    assert answer["status"] == 200 and answer["record"]["status"] == "interrupted", answer


def test_a_failed_job_retries_with_backoff_then_can_be_retried_by_request(tasks_client, consumer, tmp_path):
    consumer(JOB_MODULES="tests.job_tasks")
    marker = tmp_path / "attempts"
    job = tasks_client.submit("fails", marker=str(marker))  # retries=2, retry_delay=1, retry_backoff=2
    waiting = {}

    def failed_for_good():
        record = tasks_client.record(job["id"])
        if record["status"] == "scheduled":  # a retry's wait: seen (soon after it began) with its run_at
            waiting.setdefault(record["attempt"], (time.time(), record))
        return record["status"] == "failed" and record
    record = wait_until(failed_for_good, 20, "the job failed after its retries", interval=0.05)
    assert (record["attempt"], marker.read_text(), record["error"]) == (3, "3", "RuntimeError: attempt 3 failed")
    assert set(waiting) == {2, 3}, "each retry waits as `scheduled`, with its run_at"
    assert waiting[2][1]["error"] == "attempt 1: RuntimeError: attempt 1 failed"
    # Each wait, from when the test saw it begin to its run_at: 1 s, then doubled (less the poll's lag).
    waits = {attempt: datetime.fromisoformat(seen["run_at"]).timestamp() - seen_at
             for attempt, (seen_at, seen) in waiting.items()}
    assert 0.2 < waits[2] <= 1.05 and 1.2 < waits[3] <= 2.05, waits

    marker.write_text("99")  # its next attempt is the 100th it counts: past `times`, it succeeds
    status, again = tasks_client.request("POST", f"/jobs/{job['id']}/retry", None)
    assert (status, again["status"], again["attempt"], again["id"], again["error"]) == (202, "queued", 4, job["id"],
                                                                                        None)
    done = tasks_client.wait_for_status(job["id"], {"done"})
    assert (done["attempt"], done["result"]) == (4, 100)
    status, refused = tasks_client.request("POST", f"/jobs/{job['id']}/retry", None)
    assert status == 409 and refused["message"] == (f"job {job['id']} is done: only a failed, interrupted or "
                                                    "canceled job can be retried")


@pytest.mark.usefixtures("storage_environment")
def test_the_same_idempotency_key_and_body_give_the_first_job_and_another_body_a_422(tasks_client):
    body = {"task": "sleepy", "args": {"seconds": 0}}
    first = tasks_client.raw("POST", "/jobs", body, {"Idempotency-Key": "order-42"})
    again = tasks_client.raw("POST", "/jobs", body, {"Idempotency-Key": "order-42"})
    assert (first[0], again[0]) == (202, 200)
    assert again[1]["id"] == first[1]["id"]
    other = tasks_client.raw("POST", "/jobs", {**body, "args": {"seconds": 1}}, {"Idempotency-Key": "order-42"})
    assert other[0] == 422
    assert other[1]["message"].startswith(f"Idempotency-Key 'order-42' was used (job {first[1]['id']}) for another")
    fresh = tasks_client.raw("POST", "/jobs", body, {"Idempotency-Key": "order-43"})
    assert fresh[0] == 202 and fresh[1]["id"] != first[1]["id"]
    bad = tasks_client.raw("POST", "/jobs", body, {"Idempotency-Key": "has space"})
    assert bad[0] == 400 and "Idempotency-Key must be 1 to 255 printable ASCII" in bad[1]["message"]


def test_a_result_larger_than_the_limit_or_not_json_fails_the_job_saying_so(tasks_client, consumer):
    consumer(JOB_MODULES="tests.job_tasks", JOB_RESULT_MAX_BYTES="1k")
    small = tasks_client.wait_for_status(tasks_client.submit("sized", size=100)["id"])
    large = tasks_client.wait_for_status(tasks_client.submit("sized", size=5000)["id"])
    odd = tasks_client.wait_for_status(tasks_client.submit("unjsonable")["id"])
    assert (small["status"], small["result"]) == ("done", "x" * 100)
    assert large["status"] == "failed" and large["result"] is None
    assert large["error"] == "its result is 5002 bytes, more than JOB_RESULT_MAX_BYTES (1024)"
    assert odd["status"] == "failed" and odd["error"].startswith("its result is not JSON: Object of type set")


# --- Auth -------------------------------------------------------------------------------------

def test_with_a_token_every_jobs_request_needs_it(monkeypatch):
    monkeypatch.setenv("JOBS_TOKEN", "t" * 32)
    client = job_tasks.create_app().test_client()
    for method, path in [("GET", "/jobs"), ("POST", "/jobs"), ("GET", "/jobs/schedules"),
                         ("GET", "/jobs/0b7e1f4c-3c44-4f9a-9a51-2a8d7b0c9e11"), ("POST", "/jobs/x/retry")]:
        missing = client.open(path, method=method)
        assert (missing.status_code, missing.is_json) == (401, True), path
        assert missing.json["message"] == "this needs the jobs token (JOBS_TOKEN): Authorization: Bearer <token>"
        wrong = client.open(path, method=method, headers={"Authorization": "Bearer " + "u" * 32})
        assert (wrong.status_code, wrong.json["message"]) == (401, "the token is not the jobs token (JOBS_TOKEN)")
    page = client.get("/jobs/dashboard")  # a page for people: its refusal too
    assert (page.status_code, page.content_type) == (401, "text/html; charset=utf-8")
    assert b"this needs the jobs token (JOBS_TOKEN)" in page.data
    assert client.get("/jobs").headers["WWW-Authenticate"] == "Bearer realm=jobs"
    assert client.get("/jobs/dashboard").headers["WWW-Authenticate"] == "Basic realm=jobs"
    assert client.get("/jobs", headers={"Authorization": "Bearer " + "t" * 32}).status_code == 200
    basic = base64.b64encode(b"anyone:" + b"t" * 32).decode()
    assert client.get("/jobs", headers={"Authorization": f"Basic {basic}"}).status_code == 200
    assert client.get("/jobs/dashboard", headers={"Authorization": f"Basic {basic}"}).status_code == 200


def test_without_a_token_the_api_is_open_and_the_dashboard_off():
    client = job_tasks.create_app().test_client()
    assert client.get("/jobs").status_code == 200
    off = client.get("/jobs/dashboard")
    assert off.status_code == 404 and b"The jobs dashboard is off: it needs a token" in off.data
