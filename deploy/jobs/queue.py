"""Durable jobs on huey: SQLite by default, Redis when REDIS_URL is set.

The web workers enqueue; the consumer (`python -m deploy.jobs.consumer`, a supervisord
program) runs the jobs. Each job has a record (deploy/jobs/store.py) beside the queue, so
every gunicorn worker, every consumer and a restarted container see the same state. Every
change of status is atomic and follows this diagram:

    queued -> running -> done | failed
       |         |-----> interrupted   its consumer stopped (GRACEFUL_TIMEOUT passed) or was
       |         |                     lost (its lease was not renewed for JOB_LEASE_SECONDS)
       |         '-----> queued        again, when the task declares retries it has not used
       '-> canceled                    DELETE while queued
       '-> failed                      no consumer knows the task

A consumer holds a lease on each job it runs and renews it; any consumer, on any host,
ends the jobs whose lease expired. Finished records expire after JOB_RESULT_TTL.
"""

import logging
import os
import socket
import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from huey import Huey
from huey import signals as huey_signals
from huey.exceptions import CancelExecution, HueyException
from huey.storage import SqliteStorage

from deploy.jobs.registry import TaskRegistry, TaskSpec, registry
from deploy.jobs.store import RedisRecords, SqliteRecords
from deploy.logs import job_context
from deploy.settings import Settings

if TYPE_CHECKING:  # the consumer imports this module without Flask
    from deploy.extension import StackExtension

QUEUE_NAME = "flask-stack"
log = logging.getLogger("deploy.jobs")


class QueueFull(Exception):
    """JOB_QUEUE_MAX jobs are already waiting."""


class JobNotCancelable(Exception):
    """The job has started or finished."""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class StackHuey(Huey):
    """huey, with the consumer side of the records: a message whose task this consumer does
    not know fails its job (instead of being dropped with the job left queued)."""

    def __init__(self, queue: "JobQueue", *args, **kwargs):
        self.job_queue = queue
        super().__init__(*args, **kwargs)

    def execute(self, task, timestamp=None):
        record = self.job_queue.records.get(task.id) or {}
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


def queue_of(extension: "StackExtension") -> "JobQueue":
    """The job queue of an app's stack state (deploy/extension.py), made when first needed."""
    return extension.part("queue", JobQueue)


class JobQueue:
    """The huey queue, the job records beside it, and the consumer's hooks."""

    def __init__(self, settings: Settings, tasks: TaskRegistry = registry):
        if settings.redis_url:
            from huey.storage import RedisStorage  # noqa: PLC0415  (only with REDIS_URL: no redis import otherwise)
            storage = {"storage_class": RedisStorage, "url": settings.redis_url}
        else:
            storage = {"storage_class": SqliteStorage, "filename": settings.job_database}
        self.huey = StackHuey(self, QUEUE_NAME, results=False, **storage)
        records_class = RedisRecords if settings.redis_url else SqliteRecords
        self.records = records_class(self.huey.storage, settings.job_result_ttl)
        self.registry = tasks
        self.queue_max = settings.job_queue_max
        self.lease_seconds = settings.job_lease_seconds
        self.counts_jobs = bool(settings.metrics_port)
        self._huey_tasks = {}
        self._in_flight: set[str] = set()
        self._in_flight_lock = threading.Lock()
        self._renewer_pid = None
        self._connect_consumer_hooks()

    # --- tasks -----------------------------------------------------------------------
    def huey_task(self, spec: TaskSpec):
        """The huey task of a registered task, made the first time it is needed."""
        if spec.name not in self._huey_tasks:
            self._huey_tasks[spec.name] = self.huey.task(
                name=spec.name, retries=spec.retries, retry_delay=spec.retry_delay)(spec.function)
        return self._huey_tasks[spec.name]

    def register_tasks(self) -> None:
        for spec in self.registry.specs.values():
            self.huey_task(spec)

    def _message(self, spec: TaskSpec, job_id: str, args: dict, retries: int):
        # Built directly, not with `.s(**args)`, which would take arguments named id, retries... as options.
        return self.huey_task(spec).task_class((), args, id=job_id, retries=retries, retry_delay=spec.retry_delay)

    # --- the web side ----------------------------------------------------------------
    def record(self, job_id: str) -> dict | None:
        return self.records.get(job_id)

    def submit(self, spec: TaskSpec, args: dict, request_id: str | None = None) -> dict:
        """Enqueue a validated job; QueueFull when JOB_QUEUE_MAX jobs already wait."""
        if self.records.queued_count() >= self.queue_max:
            raise QueueFull(f"{self.queue_max} jobs are already waiting; try again later")
        message = self._message(spec, job_id=None, args=args, retries=spec.retries)
        record = {"id": message.id, "task": spec.name, "args": args, "status": "queued", "attempt": 1,
                  "created_at": now_iso(), "started_at": None, "finished_at": None,
                  "result": None, "error": None, "worker": None, "request_id": request_id}
        self.records.insert(record, created=self.records.now())  # before a consumer can see the task
        self.huey.enqueue(message)
        return record

    def cancel(self, job_id: str) -> dict | None:
        """Cancel a queued job: its record, None if there is no such job; JobNotCancelable once it has started."""
        change = self.records.change(job_id, ("queued",), {"status": "canceled", "finished_at": now_iso()})
        if change.record is not None and not change.changed:
            raise JobNotCancelable(f"job {job_id} is {change.record['status']}: only a queued job can be canceled")
        return change.record

    # --- the consumer side -----------------------------------------------------------
    def unknown_task(self, job_id: str, huey_name: str) -> None:
        names = ", ".join(sorted(self.registry.specs)) or "none"
        error = (f"no task {huey_name!r} in this consumer (host {socket.gethostname()}; its tasks: {names}): "
                 "is its module in JOB_MODULES?")
        change = self.records.change(job_id, ("queued",), {"status": "failed", "finished_at": now_iso(),
                                                           "error": error})
        if change.changed:
            self._count(change.record)
            log.error("job %s failed: %s", job_id, error)

    def _connect_consumer_hooks(self) -> None:
        huey = self.huey

        @huey.pre_execute()
        def start(task):
            change = self.records.change(
                task.id, ("queued",),
                {"status": "running", "started_at": now_iso(), "finished_at": None,
                 "worker": {"host": socket.gethostname(), "pid": os.getpid()}},
                lease_until=self.records.now() + self.lease_seconds)
            if not change.changed:
                found = change.record["status"] if change.record else "gone"
                log.info("job %s not run: it is %s", task.id, found)
                raise CancelExecution(retry=False)
            self._hold_lease(task.id)

        @huey.post_execute()
        def finish(task, task_value, exc):
            self._release_lease(task.id)
            if exc is None:
                self._finish(task.id, {"status": "done", "result": task_value})

        @huey.signal(huey_signals.SIGNAL_ERROR)
        def failed(signal, task, exc=None):
            if not task.retries:  # else huey retries it: SIGNAL_RETRYING follows
                self._finish(task.id, {"status": "failed", "error": f"{type(exc).__name__}: {exc}"})

        @huey.signal(huey_signals.SIGNAL_RETRYING)
        def retrying(signal, task):
            self.records.change(task.id, ("running",),
                                lambda record: {"status": "queued", "attempt": record["attempt"] + 1, "error": None})

        @huey.signal(huey_signals.SIGNAL_INTERRUPTED)
        def interrupted(signal, task):
            self._release_lease(task.id)
            self.end_lost_job(task.id, "the consumer stopped while the job was running", only_if_expired=False)

    def _count(self, record: dict) -> None:
        if self.counts_jobs and record["status"] in ("done", "failed", "interrupted"):
            from deploy.metrics import count_finished_job  # noqa: PLC0415  (prometheus-client only when counting)
            count_finished_job(record["task"], record["status"])

    def _finish(self, job_id: str, changes: dict) -> None:
        change = self.records.change(job_id, ("running",), {**changes, "finished_at": now_iso()})
        if change.changed:
            self._count(change.record)
        else:
            found = change.record["status"] if change.record else "gone"
            log.warning("job %s ended %s after it had been marked %s (its lease had expired)",
                        job_id, changes["status"], found)

    def end_lost_job(self, job_id: str, reason: str, only_if_expired: bool = True) -> str | None:
        """A running job whose consumer is gone: queued again if its task has retries left,
        else interrupted. Returns the new status, or None if another process got there first."""
        record = self.records.get(job_id)
        if record is None or record["status"] != "running":
            return None
        spec = self.registry.specs.get(record["task"])
        retries_left = (spec.retries - (record["attempt"] - 1)) if spec else 0
        if retries_left > 0:
            changes = {"status": "queued", "attempt": record["attempt"] + 1,
                       "error": f"attempt {record['attempt']}: {reason}"}
        else:
            changes = {"status": "interrupted", "finished_at": now_iso(), "error": reason}
        change = self.records.change(job_id, ("running",), changes, attempt=record["attempt"],
                                     lease_expired_at=self.records.now() if only_if_expired else None)
        if not change.changed:
            return None
        self._count(change.record)
        if retries_left > 0:
            self.huey.enqueue(self._message(spec, job_id, record["args"], retries=retries_left - 1))
        log.warning("job %s (%s, attempt %d): %s: %s", job_id, record["task"], record["attempt"], reason,
                    changes["status"])
        return changes["status"]

    def end_expired_leases(self) -> list[str]:
        """Every job whose consumer stopped renewing its lease (killed, removed, host lost)."""
        ended = []
        for record in self.records.expired_leases(self.records.now()):
            if self.end_lost_job(record["id"], f"its consumer on {record['worker']['host']} was lost "
                                               f"(no lease renewal for {self.lease_seconds} s)"):
                ended.append(record["id"])
        return ended

    # --- leases ------------------------------------------------------------------------
    def _hold_lease(self, job_id: str) -> None:
        with self._in_flight_lock:
            self._in_flight.add(job_id)
            if self._renewer_pid != os.getpid():  # one renewer per process (JOB_WORKER_TYPE=process forks)
                self._renewer_pid = os.getpid()
                threading.Thread(target=self._renew_leases, name="lease-renewer", daemon=True).start()

    def _release_lease(self, job_id: str) -> None:
        with self._in_flight_lock:
            self._in_flight.discard(job_id)

    def _renew_leases(self) -> None:
        while True:
            time.sleep(self.lease_seconds / 3)
            with self._in_flight_lock:
                job_ids = list(self._in_flight)
            if not job_ids:
                continue
            try:
                self.records.renew(job_ids, self.records.now() + self.lease_seconds)
            except Exception:  # the store is unreachable for now: the next turn tries again
                log.exception("could not renew the leases of jobs %s", job_ids)
