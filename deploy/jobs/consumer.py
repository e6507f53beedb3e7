"""The job consumer: `python -m deploy.jobs.consumer`, run by supervisord (ROLE=all or worker).

It imports the modules named by JOB_MODULES, so that every task the web app registers
exists here too (a module that cannot be imported stops it, naming the module), then runs
huey's consumer. Its scheduler also ends the jobs whose consumer was lost (their lease
expired: killed, removed, host lost) and deletes the records past JOB_RESULT_TTL.
SIGTERM is a graceful stop: no new jobs; the running ones get GRACEFUL_TIMEOUT to finish,
then are interrupted (or queued again, where their task declares retries).
"""

import importlib
import logging
import logging.config
import sys
import time
import traceback

from huey.consumer import Consumer, Scheduler

from deploy.jobs.queue import JobQueue
from deploy.logs import logging_config, skip_unused_record_fields
from deploy.settings import ConfigError, Settings

log = logging.getLogger("deploy.jobs.consumer")
RECORD_CLEANUP_EVERY = 60  # seconds between two deletions of expired records


def import_task_modules(names: tuple[str, ...]) -> None:
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as error:
            detail = "".join(traceback.format_exception_only(error)).strip()
            raise ConfigError(f"JOB_MODULES: cannot import {name!r}: {detail}") from error


class RecordKeepingScheduler(Scheduler):
    """huey's scheduler, which also ends the jobs whose lease expired and now and then deletes
    expired records. It does so where huey reads its schedule (a process of its own with
    JOB_WORKER_TYPE=process, else a thread), with huey's connection to the store: the process
    that huey forks its workers from then has no other thread inside SQLite, whose locks a
    child must not inherit."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.next_check = self.next_cleanup = 0.0

    def loop(self, now=None):
        if time.monotonic() >= self.next_check:
            self.keep_records(self.huey.job_queue)
        super().loop(now)

    def keep_records(self, queue: JobQueue) -> None:
        self.next_check = time.monotonic() + max(1.0, queue.lease_seconds / 4)
        try:
            queue.end_expired_leases()
            if time.monotonic() >= self.next_cleanup:
                self.next_cleanup = time.monotonic() + RECORD_CLEANUP_EVERY
                deleted = queue.records.delete_expired(queue.records.now())
                if deleted:
                    log.info("deleted %d job records past JOB_RESULT_TTL", deleted)
        except Exception:  # the store is unreachable for now: the next turn tries again
            log.exception("could not check the job records")


class StackConsumer(Consumer):
    scheduler_class = RecordKeepingScheduler


def main() -> int:
    try:
        settings = Settings.from_env()
    except ConfigError as error:
        for line in str(error).splitlines():
            print(f"configuration error: {line}", file=sys.stderr)
        return 2
    logging.config.dictConfig(logging_config(settings, "consumer"))
    skip_unused_record_fields()
    try:
        import_task_modules(settings.job_modules)
    except ConfigError as error:
        log.critical("configuration error: %s", error)  # in the jobs' log
        if settings.log_target == "files":
            print(f"configuration error: {error}", file=sys.stderr)  # and on `docker logs`
        return 2
    queue = JobQueue(settings)
    queue.register_tasks()
    log.info("tasks: %s (from %s)", ", ".join(sorted(queue.registry.specs)) or "none",
             ", ".join(settings.job_modules))
    if settings.role == "worker" and settings.metrics_port:  # else the gunicorn master serves them
        from deploy import metrics  # noqa: PLC0415  (prometheus-client only when counting)
        metrics.serve(settings, metrics.JobsCollector(settings))
    consumer = StackConsumer(
        queue.huey,
        workers=settings.job_workers,
        worker_type=settings.job_worker_type,
        graceful_signal="TERM",
        shutdown_timeout=settings.graceful_timeout,
        # An idle consumer polls SQLite with a growing delay; huey's 10 s default would let a
        # new job wait that long. (Redis storage blocks on the queue instead of polling.)
        max_delay=1.0,
    )
    consumer.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
