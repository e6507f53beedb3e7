"""Durable jobs on huey: SQLite by default, Redis when REDIS_URL is set.

The web workers enqueue; the consumer (`python -m deploy.jobs.consumer`, a supervisord
program) runs the jobs. Each job has a record (deploy/jobs/store.py) beside the queue, so
every gunicorn worker, every consumer and a restarted container see the same state. Every
change of status is atomic and follows this diagram:

    scheduled -> queued          at its run_at (POST /jobs with a delay; a retry's wait)
    queued -> running -> done | failed      failed: it raised, timed out, or its result is too large
       |         |-----> canceled          DELETE while it runs: its consumer stops it
       |         |-----> interrupted       its consumer stopped (GRACEFUL_TIMEOUT passed) or was
       |         |                         lost (its lease was not renewed for JOB_LEASE_SECONDS)
       |         '-----> scheduled|queued  again, as its next attempt, while its task has retries
       '-> canceled                        DELETE while queued (or scheduled)
       '-> failed                          no consumer knows the task
    failed | interrupted | canceled -> queued    POST /jobs/<id>/retry: its next attempt

A consumer holds a lease on each job it runs and renews it; any consumer, on any host, ends
the jobs whose lease expired. Every write of a consumer about a running job carries the
attempt it runs: a consumer that stalled past its lease, and whose job was taken over, can no
longer change the record. Finished records expire after JOB_RESULT_TTL.

huey carries the messages, runs the workers (threads, greenlets or processes), and bounds a
task's time (`timeout`); it retries nothing by itself: retries are attempts of the record.
"""

import json
import logging
import os
import socket
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from huey import Huey
from huey import signals as huey_signals
from huey.exceptions import CancelExecution, HueyException, TaskTimeout
from huey.storage import SqliteStorage

from deploy.jobs.registry import TaskRegistry, TaskSpec, registry
from deploy.jobs.running import JobCanceled, Runs
from deploy.jobs.store import Idempotency, Inserted, Transition
from deploy.jobs.ticks import Cron, zone_named
from deploy.logs import job_context
from deploy.settings import Settings

if TYPE_CHECKING:  # the consumer imports this module without Flask
    from deploy.extension import StackExtension

QUEUE_NAME = "flask-stack"
log = logging.getLogger("deploy.jobs")


class QueueFull(Exception):
    """JOB_QUEUE_MAX jobs are already waiting."""


class JobNotCancelable(Exception):
    """The job has finished."""


class JobNotRetryable(Exception):
    """The job has not failed, been interrupted or canceled."""


def iso(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="milliseconds")


def queue_of(extension: "StackExtension") -> "JobQueue":
    """The job queue of an app's stack state (deploy/extension.py), made when first needed."""
    return extension.part("queue", JobQueue)


class StackHuey(Huey):
    """huey, with the consumer side of the records: a message whose task this consumer does
    not know fails its job (instead of being dropped with the job left queued)."""

    def __init__(self, queue: "JobQueue", *args, **kwargs):
        self.job_queue = queue
        super().__init__(*args, **kwargs)

    def execute(self, task, timestamp=None):
        record = self.job_queue.store.get(task.id) or {}
        with job_context(task.id, record.get("request_id")):  # on every log line about the job
            return super().execute(task, timestamp)

    def deserialize_task(self, data):
        message = self.serializer.deserialize(data)
        try:
            return self._registry.create_task(message)
        except HueyException:
            self.job_queue.register_tasks()  # a task registered since the consumer started
            try:
                return self._registry.create_task(message)
            except HueyException:
                self.job_queue.unknown_task(message.id, message.name)
                return None


class JobQueue:
    """The huey queue, the job records beside it, and the consumer's hooks."""

    def __init__(self, settings: Settings, tasks: TaskRegistry = registry,
                 on_finished: Callable[[str, str], None] | None = None):
        """`on_finished(task, status)`: called when a job ends (done, failed, interrupted, canceled)."""
        if settings.redis_url:
            from huey.storage import RedisStorage  # noqa: PLC0415  (only with REDIS_URL: no redis import otherwise)

            from deploy.jobs.redis_store import RedisStore  # noqa: PLC0415
            storage, store_class = {"storage_class": RedisStorage, "url": settings.redis_url}, RedisStore
        else:
            from deploy.jobs.sqlite_store import SqliteStore  # noqa: PLC0415
            storage, store_class = {"storage_class": SqliteStorage, "filename": settings.job_database}, SqliteStore
        self.huey = StackHuey(self, QUEUE_NAME, results=False, **storage)
        self.store = store_class(self.huey.storage, settings.job_result_ttl)
        self.registry = tasks
        self.settings = settings
        self.on_finished = on_finished
        self.runs = Runs(self, settings)
        self._huey_tasks = {}
        self._connect_consumer_hooks()

    # --- tasks and their messages --------------------------------------------------------
    def huey_task(self, spec: TaskSpec):
        """The huey task of a registered task, made the first time it is needed."""
        if spec.name not in self._huey_tasks:
            self._huey_tasks[spec.name] = self.huey.task(name=spec.name, timeout=spec.timeout)(spec.function)
        return self._huey_tasks[spec.name]

    def register_tasks(self) -> None:
        for spec in self.registry.specs.values():
            self.huey_task(spec)

    def message(self, spec: TaskSpec, job_id: str, args: dict) -> bytes:
        """huey's message for a job, serialized: the task built directly, not with `.s(**args)`,
        which would take arguments named id, retries... as options. It never retries: attempts
        are the record's."""
        return self.huey.serialize_task(self.huey_task(spec).task_class((), args, id=job_id, retries=0))

    def new_record(self, spec: TaskSpec, args: dict, now: float, status: str, **fields) -> tuple[dict, bytes]:
        """A new job's record and huey's message for it."""
        job_id = str(uuid.uuid4())  # as huey names its tasks
        record = {"id": job_id, "task": spec.name, "args": args, "status": status, "attempt": 1,
                  "created_at": iso(now), "started_at": None, "finished_at": None, "run_at": None,
                  "scheduled_for": None, "progress": None, "result": None, "error": None, "worker": None,
                  "request_id": None, "cancel_requested_at": None, **fields}
        return record, self.message(spec, job_id, args)

    # --- the web side ----------------------------------------------------------------
    def record(self, job_id: str) -> dict | None:
        return self.store.get(job_id)

    def submit(self, spec: TaskSpec, args: dict, request_id: str | None = None, run_at: float | None = None,
               idempotency: Idempotency | None = None) -> Inserted:
        """Enqueue a validated job, now or at `run_at`; QueueFull when JOB_QUEUE_MAX jobs already
        wait. With an Idempotency-Key already used, the first job (or a conflict)."""
        now = self.store.now()
        later = run_at is not None and run_at > now
        if not later and self.store.queued_count() >= self.settings.job_queue_max:
            raise QueueFull(f"{self.settings.job_queue_max} jobs are already waiting; try again later")
        record, message = self.new_record(spec, args, now, "scheduled" if later else "queued", request_id=request_id,
                                          run_at=iso(run_at) if later else None)
        # Before a consumer can see the message: in the same transaction.
        return self.store.insert(record, now, message=None if later else message, run_at=run_at if later else None,
                                 idempotency=idempotency)

    def cancel(self, job_id: str) -> tuple[dict | None, bool]:
        """Cancel a job: its record (None if there is no such job) and whether it is canceled
        already (scheduled or queued) or only asked to stop (running: its consumer stops it).
        JobNotCancelable once it has finished."""
        change = self.store.change(job_id, ("scheduled", "queued"),
                                   {"status": "canceled", "finished_at": self.now_iso()})
        if change.changed or change.record is None:
            return change.record, True
        asked = self.store.change(job_id, ("running",), lambda record: {
            "cancel_requested_at": record["cancel_requested_at"] or self.now_iso()})
        if asked.changed:
            log.info("job %s: cancel asked while it runs", job_id)
            return asked.record, False
        if asked.record is None:
            return None, True  # deleted meanwhile (past JOB_RESULT_TTL)
        if asked.record["status"] in ("scheduled", "queued"):
            return self.cancel(job_id)  # it went back to waiting meanwhile (a retry)
        raise JobNotCancelable(f"job {job_id} is {asked.record['status']}: it has finished")

    def retry(self, job_id: str) -> dict | None:
        """Run a failed, interrupted or canceled job again, as its next attempt: its record, None
        if there is no such job; JobNotRetryable otherwise."""
        record = self.store.get(job_id)
        if record is None:
            return None
        spec = self.registry.specs.get(record["task"])
        if spec is None:
            raise JobNotRetryable(f"job {job_id}'s task {record['task']!r} is not registered in this app")
        message = self.message(spec, job_id, record["args"])
        change = self.store.change(job_id, ("failed", "interrupted", "canceled"), lambda found: {
            "status": "queued", "attempt": found["attempt"] + 1, "started_at": None, "finished_at": None,
            "result": None, "error": None, "progress": None, "worker": None, "cancel_requested_at": None},
            message=message)
        if not change.changed:
            if change.record is None:
                return None
            raise JobNotRetryable(f"job {job_id} is {change.record['status']}: only a failed, interrupted or "
                                  "canceled job can be retried")
        log.info("job %s queued again by request: attempt %d", job_id, change.record["attempt"])
        return change.record

    def now_iso(self) -> str:
        return iso(self.store.now())

    def schedules(self) -> list[dict]:
        """The scheduled tasks this process knows, with their state in the store (GET /jobs/schedules)."""
        states = self.store.schedule_states()
        now = self.store.now()
        last_jobs = self.store.get_many(state.last_job for state in states.values() if state.last_job)
        answer = []
        for spec in sorted(self.registry.scheduled(), key=lambda spec: spec.name):
            state = states.get(spec.name)
            timezone = (spec.timezone or self.settings.schedule_timezone) if isinstance(spec.schedule, Cron) else None
            after = datetime.fromtimestamp(max(now, state.last_tick) if state else now, UTC)
            upcoming = spec.schedule.next_after(after, zone_named(timezone or "UTC"))
            last = last_jobs.get(state.last_job) if state and state.last_job else None
            answer.append({
                "task": spec.name,
                "cron": spec.schedule.expression if isinstance(spec.schedule, Cron) else None,
                "every": None if isinstance(spec.schedule, Cron) else spec.schedule.seconds,
                "timezone": timezone,
                "overlap": spec.overlap,
                "next_run": iso(upcoming.timestamp()) if upcoming else None,
                "last_run": {key: last[key] for key in ("id", "status", "scheduled_for")} if last else None,
                "runs": state.runs if state else 0,
                "skipped": state.skipped + state.missed if state else 0,
                "missed": state.missed if state else 0,
                "last_success": iso(state.last_success) if state and state.last_success else None,
            })
        return answer

    # --- the consumer side -----------------------------------------------------------
    def unknown_task(self, job_id: str, name: str, from_status: str = "queued") -> None:
        names = ", ".join(sorted(self.registry.specs)) or "none"
        error = (f"no task {name!r} in this consumer (host {socket.gethostname()}; its tasks: {names}): "
                 "is its module in JOB_MODULES?")
        change = self.store.change(job_id, (from_status,), {"status": "failed", "finished_at": self.now_iso(),
                                                            "error": error})
        if change.changed:
            self.finished(change.record)
            log.error("job %s failed: %s", job_id, error)

    def finished(self, record: dict) -> None:
        if self.on_finished is not None:
            self.on_finished(record["task"], record["status"])

    def _connect_consumer_hooks(self) -> None:
        huey = self.huey

        @huey.pre_execute()
        def start(task):
            change = self.store.change(
                task.id, ("queued",),
                {"status": "running", "started_at": self.now_iso(), "finished_at": None,
                 "worker": {"host": socket.gethostname(), "pid": os.getpid()}},
                lease_until=self.store.now() + self.settings.job_lease_seconds)
            if not change.changed:
                found = change.record["status"] if change.record else "gone"
                log.info("job %s not run: it is %s", task.id, found)
                raise CancelExecution(retry=False)
            self.runs.started(task, change.record["attempt"])

        @huey.post_execute()
        def finish(task, task_value, exc):
            run = self.runs.ended(task.id)
            if run is None or isinstance(exc, JobCanceled):
                return  # canceled: its consumer's watch has ended the record already
            if exc is None and not task.is_timed_out:
                self._succeeded(run.job_id, run.attempt, task_value, run.progress)
            elif exc is None or isinstance(exc, TaskTimeout):  # a thread cannot be stopped: it ran past it
                self.attempt_failed(run.job_id, run.attempt, f"timed out after {task.timeout:g} s", run.progress)
            else:
                self.attempt_failed(run.job_id, run.attempt, f"{type(exc).__name__}: {exc}", run.progress)

        @huey.signal(huey_signals.SIGNAL_INTERRUPTED)
        def interrupted(signal, task):
            run = self.runs.ended(task.id)
            if run is not None:
                self.end_lost_job(task.id, "the consumer stopped while the job was running", attempt=run.attempt)

    def _succeeded(self, job_id: str, attempt: int, value, progress: dict | None) -> None:
        try:
            size = len(json.dumps(value))
        except (TypeError, ValueError) as error:
            self._end(job_id, attempt, {"status": "failed", "error": f"its result is not JSON: {error}"}, progress)
            return
        if size > self.settings.job_result_max_bytes:
            self._end(job_id, attempt, {"status": "failed", "error": (
                f"its result is {size} bytes, more than JOB_RESULT_MAX_BYTES ({self.settings.job_result_max_bytes})")},
                progress)
            return
        record = self._end(job_id, attempt, {"status": "done", "result": value}, progress)
        if record is not None and record["scheduled_for"]:
            self.store.schedule_succeeded(record["task"], self.store.now())

    def _end(self, job_id: str, attempt: int, changes: dict, progress: dict | None) -> dict | None:
        """A running attempt's end, written only if the record is still at that attempt."""
        change = self.store.change(job_id, ("running",), {**changes, "finished_at": self.now_iso(),
                                                          "progress": progress}, attempt=attempt)
        if change.changed:
            self.finished(change.record)
            return change.record
        self._stale(job_id, attempt, changes["status"], change)
        return None

    @staticmethod
    def _stale(job_id: str, attempt: int, status: str, change: Transition) -> None:
        found = change.record
        log.warning("job %s: attempt %d ended %s, but the record is %s: not written (its lease had expired, "
                    "and another consumer or a cancel took it over)", job_id, attempt, status,
                    f"{found['status']} at attempt {found['attempt']}" if found else "gone")

    def attempt_failed(self, job_id: str, attempt: int, error: str, progress: dict | None = None,
                       from_status: str = "running", final_status: str = "failed", **conditions) -> str | None:
        """Attempt `attempt` of a job failed or was lost: its next attempt (queued, or scheduled
        after the task's retry delay) while its task has retries left, else `final_status`.
        Returns the new status, or None if the record was not at that attempt (or conditions)."""
        record = self.store.get(job_id)
        if record is None:
            return None
        spec = self.registry.specs.get(record["task"])
        retries_left = (spec.retries - (attempt - 1)) if spec else 0
        if record["cancel_requested_at"] or retries_left <= 0:
            canceled = bool(record["cancel_requested_at"])  # not run again: it was asked to stop
            change = self.store.change(job_id, (from_status,), {
                "status": "canceled" if canceled else final_status, "finished_at": self.now_iso(),
                "error": f"canceled: {error}" if canceled else error, "progress": progress},
                attempt=attempt, **conditions)
        else:
            delay = spec.retry_delay_after(attempt)
            run_at = self.store.now() + delay if delay else None
            message = None if run_at else self.message(spec, job_id, record["args"])
            change = self.store.change(job_id, (from_status,), {
                "status": "scheduled" if run_at else "queued", "attempt": attempt + 1, "run_at": iso(run_at) if run_at
                else None, "error": f"attempt {attempt}: {error}", "progress": progress, "started_at": None,
                "worker": None}, attempt=attempt, run_at=run_at, message=message, **conditions)
        if not change.changed:
            if change.record is not None and not conditions:
                self._stale(job_id, attempt, "failed", change)
            return None
        if change.record["status"] in ("failed", "interrupted", "canceled"):
            self.finished(change.record)
        log.warning("job %s (%s, attempt %d): %s: %s", job_id, record["task"], attempt, error, change.record["status"])
        return change.record["status"]

    def end_lost_job(self, job_id: str, reason: str, attempt: int, only_if_expired: bool = False) -> str | None:
        """A running job whose consumer is gone: its next attempt if its task has retries left,
        else interrupted (canceled, if a cancel was asked). None if another process got there first."""
        conditions = {"lease_expired_at": self.store.now()} if only_if_expired else {}
        return self.attempt_failed(job_id, attempt, reason, final_status="interrupted", **conditions)

    def end_expired_leases(self) -> list[str]:
        """Every job whose consumer stopped renewing its lease (killed, removed, host lost)."""
        ended = []
        for record in self.store.expired_leases(self.store.now()):
            reason = (f"its consumer on {record['worker']['host']} was lost "
                      f"(no lease renewal for {self.settings.job_lease_seconds} s)")
            if self.end_lost_job(record["id"], reason, attempt=record["attempt"], only_if_expired=True):
                ended.append(record["id"])
        return ended

    def start_due_jobs(self, limit: int = 100) -> list[str]:
        """Queue the scheduled jobs whose time has come (a delay, a retry's wait)."""
        started = []
        for record in self.store.due_scheduled(self.store.now(), limit):
            spec = self.registry.specs.get(record["task"])
            if spec is None:
                self.unknown_task(record["id"], record["task"], from_status="scheduled")
                continue
            message = self.message(spec, record["id"], record["args"])
            change = self.store.change(record["id"], ("scheduled",), {"status": "queued"}, message=message)
            if change.changed:
                started.append(record["id"])
        return started
