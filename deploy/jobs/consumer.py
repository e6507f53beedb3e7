"""The job consumer: `python -m deploy.jobs.consumer`, run by supervisord (ROLE=all or worker).

It imports the modules named by JOB_MODULES, so that every task the web app registers
exists here too (a module that cannot be imported, or a task defined wrongly, stops it,
naming it), then runs huey's consumer, whose scheduler also starts delayed jobs, claims the
ticks of scheduled tasks, ends the jobs whose consumer was lost and deletes expired records
(deploy/jobs/scheduling.py). With JOB_WORKER_TYPE=greenlet, gevent patches the standard
library first, so that a job that waits lets the others run.
SIGTERM is a graceful stop: no new jobs; the running ones get GRACEFUL_TIMEOUT to finish,
then are interrupted (or queued again, where their task declares retries).
"""

import importlib
import logging
import logging.config
import sys
import traceback

from deploy.logs import logging_config, skip_unused_record_fields
from deploy.settings import ConfigError, Settings

log = logging.getLogger("deploy.jobs.consumer")


def import_task_modules(names: tuple[str, ...]) -> None:
    from deploy.jobs.registry import TaskDefinitionError  # noqa: PLC0415  (after gevent's patching)
    for name in names:
        try:
            importlib.import_module(name)
        except TaskDefinitionError as error:
            raise ConfigError(f"JOB_MODULES: {name}: {error}") from error
        except Exception as error:
            detail = "".join(traceback.format_exception_only(error)).strip()
            raise ConfigError(f"JOB_MODULES: cannot import {name!r}: {detail}") from error


def count_finished_job(task: str, status: str) -> None:
    """A job ended: counted in the metrics. prometheus-client is imported at the first end, not
    at start: megabytes that an idle consumer need not hold (bench/README.md, "Memory")."""
    from deploy.metrics.jobs import count_finished_job as count  # noqa: PLC0415
    count(task, status)


def run(settings: Settings) -> None:
    # After gevent's patching (greenlet workers): huey, the store's client, the tasks.
    from huey.consumer import Consumer  # noqa: PLC0415

    from deploy.jobs.queue import JobQueue  # noqa: PLC0415
    from deploy.jobs.scheduling import StackScheduler, TickClaims  # noqa: PLC0415

    class StackConsumer(Consumer):
        def _create_scheduler(self):
            return StackScheduler(ticks, huey=self.huey, stop_flag=self.stop_flag,
                                  interval=self.scheduler_interval, periodic=False)

    import_task_modules(settings.job_modules)
    queue = JobQueue(settings, on_finished=count_finished_job if settings.metrics_port else None)
    queue.register_tasks()
    ticks = TickClaims(queue, settings.schedule_timezone)
    scheduled = [f"{spec.name} ({spec.schedule.describe()})" for spec in queue.registry.scheduled()]
    log.info("tasks: %s (from %s)%s", ", ".join(sorted(queue.registry.specs)) or "none",
             ", ".join(settings.job_modules), f"; scheduled: {', '.join(scheduled)}" if scheduled else "")
    if not settings.runs_web and settings.metrics_port:  # else the gunicorn master serves them
        from deploy.metrics import exposition, jobs  # noqa: PLC0415
        exposition.serve(settings, jobs.JobsCollector(lambda: JobQueue(settings).store))
    consumer = StackConsumer(
        queue.huey,
        workers=settings.job_workers,
        worker_type=settings.job_worker_type,
        graceful_signal="TERM",
        shutdown_timeout=settings.graceful_timeout,
        # An idle consumer polls SQLite with a growing delay; huey's 10 s default would let a
        # new job wait that long. (Redis storage blocks on the queue instead of polling.)
        max_delay=1.0,
        # A process worker ended because its job was canceled in native code is replaced soon.
        health_check_interval=1,
    )
    consumer.run()


def main() -> int:
    try:
        settings = Settings.from_env()
    except ConfigError as error:
        for line in str(error).splitlines():
            print(f"configuration error: {line}", file=sys.stderr)
        return 2
    if settings.job_worker_type == "greenlet":
        from gevent import monkey  # noqa: PLC0415  (the greenlet workers only)
        monkey.patch_all()
    logging.config.dictConfig(logging_config(settings, "consumer"))
    skip_unused_record_fields()
    try:
        run(settings)
    except ConfigError as error:
        log.critical("configuration error: %s", error)  # in the jobs' log
        if not settings.logs_to_streams:
            print(f"configuration error: {error}", file=sys.stderr)  # and on `docker logs`
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
