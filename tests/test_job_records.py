"""The job records' status diagram, on SQLite and on a real Redis server: each change a
compare-and-set, a message in the queue exactly when a record says queued, attempts fenced,
and a scheduled task's tick claimed once however many consumers race for it."""

import random
import threading
import time
from collections import Counter

import pytest

from deploy.jobs.queue import JobNotCancelable, JobQueue
from deploy.jobs.registry import TaskRegistry
from deploy.jobs.store import Tick
from deploy.settings import Settings
from tests import figures
from tests.containers import wait_until

pytestmark = pytest.mark.usefixtures("storage_environment")


@pytest.fixture
def flaky_queue():
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


def submit(queue: JobQueue, task: str, **args) -> dict:
    return queue.submit(*queue.registry.validate(task, args, {})).record


def run_next(queue: JobQueue) -> None:
    queue.huey.execute(queue.huey.dequeue())


def start_next(queue: JobQueue) -> str:
    """A consumer starts the next job and holds its lease, then is lost (its watch stops)."""
    message = queue.huey.dequeue()
    queue.huey._run_pre_execute(message)
    run = queue.runs.ended(message.id)
    return message.id, run.attempt


def test_a_failing_task_fails_with_its_error_and_is_retried_when_it_declares_retries(flaky_queue):
    queue = flaky_queue
    retried = submit(queue, "flaky", fail_times=1)
    run_next(queue)
    record = queue.record(retried["id"])
    assert (record["status"], record["attempt"]) == ("queued", 2)  # handed back for its retry, its message with it
    assert record["error"] == "attempt 1: RuntimeError: attempt 1 failed"
    assert queue.huey.pending_count() == 1
    run_next(queue)
    assert (queue.record(retried["id"])["status"], queue.record(retried["id"])["result"]) == ("done", "ok")

    queue.calls.clear()
    failed = submit(queue, "flaky", fail_times=5)
    run_next(queue)
    run_next(queue)
    record = queue.record(failed["id"])
    assert (record["status"], record["attempt"]) == ("failed", 2)
    assert record["error"] == "RuntimeError: attempt 2 failed"
    assert queue.huey.pending_count() == 0


def test_a_lost_job_is_queued_again_while_its_task_has_retries_then_interrupted(flaky_queue):
    queue = flaky_queue
    job = submit(queue, "flaky", fail_times=0)
    for attempt, status in ((1, "queued"), (2, "interrupted")):
        job_id, started_attempt = start_next(queue)
        assert (job_id, started_attempt) == (job["id"], attempt)
        assert queue.record(job["id"])["status"] == "running"
        assert queue.end_lost_job(job["id"], "lost", attempt=attempt) == status
        assert queue.record(job["id"])["attempt"] == attempt + (status == "queued")
    assert queue.huey.pending_count() == 0  # the second loss used the last retry: nothing queued
    assert queue.record(job["id"])["error"] == "lost"


def test_an_attempt_that_lost_its_job_can_no_longer_write_its_record(flaky_queue):
    """Fencing: a consumer whose job was taken over ends its attempt, and the record stays the next one's."""
    queue = flaky_queue
    job = submit(queue, "flaky", fail_times=0)
    _, first = start_next(queue)
    assert queue.end_lost_job(job["id"], "lost", attempt=first) == "queued"
    _, second = start_next(queue)  # attempt 2 runs elsewhere
    assert second == first + 1
    queue._end(job["id"], first, {"status": "done", "result": "from the lost attempt"}, None)
    assert queue.attempt_failed(job["id"], first, "late failure of the lost attempt") is None
    queue.store.renew({job["id"]: first}, queue.store.now() - 1)  # the stale consumer's renewal changes nothing
    assert queue.end_expired_leases() == []
    record = queue.record(job["id"])
    assert (record["status"], record["attempt"], record["result"]) == ("running", 2, None)


def test_an_expired_lease_is_ended_by_any_consumer_and_a_live_one_is_not(flaky_queue, monkeypatch):
    queue = flaky_queue
    job = submit(queue, "flaky", fail_times=0)
    _, attempt = start_next(queue)
    assert queue.end_expired_leases() == []
    queue.store.renew({job["id"]: attempt}, queue.store.now() + 60)
    assert queue.end_expired_leases() == []  # renewed
    queue.store.renew({job["id"]: attempt}, queue.store.now() - 1)
    assert queue.end_expired_leases() == [job["id"]]
    assert queue.record(job["id"])["status"] == "queued"  # retried: its task declares one retry
    assert queue.end_expired_leases() == []  # ended once


def test_a_change_while_a_job_runs_keeps_its_lease(flaky_queue):
    """Progress or a cancel asked changes the record of a running job, not its lease: neither
    shortened (another consumer would reap it) nor dropped (a lost consumer's job never would be)."""
    queue = flaky_queue
    job = submit(queue, "flaky", fail_times=0)
    _, attempt = start_next(queue)
    lease_end = queue.store.now() + queue.settings.job_lease_seconds
    assert queue.store.change(job["id"], ("running",), {"progress": {"fraction": 0.5, "message": "half"}},
                              attempt=attempt).changed
    assert queue.cancel(job["id"])[1] is False  # asked: it runs on
    assert queue.store.expired_leases(lease_end - 1) == []
    assert [record["id"] for record in queue.store.expired_leases(lease_end + 1)] == [job["id"]]


def test_finished_records_expire_after_the_ttl_and_live_ones_never(flaky_queue, monkeypatch):
    queue = flaky_queue
    monkeypatch.setattr(queue.store, "result_ttl", 1)
    done = submit(queue, "flaky", fail_times=0)
    run_next(queue)
    waiting = submit(queue, "flaky", fail_times=0)
    assert queue.record(done["id"])["status"] == "done"

    def expired():
        queue.store.delete_expired(queue.store.now())  # the consumer's cleanup, every minute
        return queue.record(done["id"]) is None
    wait_until(expired, 5, "the finished record deleted after its TTL")
    assert queue.record(waiting["id"])["status"] == "queued"
    listed = queue.store.page(None, None, None, 10)[0]
    assert [record["id"] for record in listed] == [waiting["id"]]  # gone from the listing too
    assert queue.store.status_counts() == {"queued": 1}


def test_counts_of_live_jobs_by_task_and_the_oldest_queued(flaky_queue):
    queue = flaky_queue
    assert all(n == 0 for n in queue.store.live_counts().values())
    assert queue.store.oldest_queued() is None
    first = submit(queue, "flaky", fail_times=0)
    submit(queue, "flaky", fail_times=0)
    start_next(queue)
    counts = {key: n for key, n in queue.store.live_counts().items() if n}
    assert counts == {("queued", "flaky"): 1, ("running", "flaky"): 1}
    assert queue.store.now() - queue.store.oldest_queued() < 5
    assert queue.record(first["id"])["status"] == "running"


def test_a_record_is_queued_exactly_when_its_message_is(flaky_queue):
    queue = flaky_queue
    now = queue.store.now()
    later = queue.submit(*queue.registry.validate("flaky", {"fail_times": 0}, {}), run_at=now + 0.5).record
    assert (later["status"], queue.huey.pending_count()) == ("scheduled", 0)
    assert queue.start_due_jobs() == []
    time.sleep(0.6)
    assert queue.start_due_jobs() == [later["id"]]
    assert (queue.record(later["id"])["status"], queue.huey.pending_count()) == ("queued", 1)
    assert queue.start_due_jobs() == []  # queued once


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
        job = submit(web, "work", n=n)
        message = consumer.huey.dequeue()
        both_ready = threading.Barrier(2)
        canceled = {}

        def cancel(job_id, both_ready, canceled):
            both_ready.wait()
            time.sleep(random.uniform(0, 0.003))  # either side may win the round
            try:
                canceled["record"], canceled["at_once"] = web.cancel(job_id)
            except JobNotCancelable:
                canceled["record"] = None

        racer = threading.Thread(target=cancel, args=(job["id"], both_ready, canceled))
        racer.start()
        both_ready.wait()
        time.sleep(random.uniform(0, 0.003))
        consumer.huey.execute(message)
        racer.join()
        record = web.record(job["id"])
        if canceled["record"] is not None and canceled["at_once"]:  # the cancel won: the job never ran
            assert (record["status"], n in ran, record["started_at"]) == ("canceled", False, None), record
        else:  # the start won: the job ran once and is done (a cancel asked while it ran came too late)
            assert (record["status"], ran.count(n), record["result"]) == ("done", 1, n), record
        outcomes[record["status"]] += 1
    assert set(outcomes) == {"canceled", "done"}, outcomes  # both sides won rounds: they raced
    figures.record(f"cancel racing a consumer's start, {storage_environment}", rounds, 0,
                   f"{outcomes['canceled']} canceled and never run, {outcomes['done']} started first and run "
                   "once: no other record")


def test_a_tick_is_claimed_once_however_many_consumers_race_for_it(storage_environment):
    registry = TaskRegistry()

    @registry.task(every=60)
    def tick() -> str:
        return "tick"

    consumers = [JobQueue(Settings.from_env(), registry) for _ in range(4)]
    spec = registry.specs["tick"]
    consumers[0].store.claim_tick(Tick("tick", None, 1000.0))  # seen for the first time
    for round_number in range(20):
        previous = 1000.0 + 60 * round_number
        outcomes, ready = [], threading.Barrier(len(consumers))

        def claim(queue, previous=previous, outcomes=outcomes, ready=ready):
            record, message = queue.new_record(spec, {}, previous + 60, "queued", scheduled_for="t")
            ready.wait()
            outcomes.append(queue.store.claim_tick(Tick("tick", previous, previous + 60, 0, (record, previous + 60,
                                                                                          message), overlap=True)))
        threads = [threading.Thread(target=claim, args=(queue,)) for queue in consumers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(outcomes) == ["lost", "lost", "lost", "ran"], outcomes
    state = consumers[0].store.schedule_states()["tick"]
    assert (state.runs, state.last_tick) == (20, 1000.0 + 60 * 20)
    assert consumers[0].huey.pending_count() == 20  # one message a tick
