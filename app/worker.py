"""The job consumer: `python -m app.worker`, run by supervisord (or alone with ROLE=worker).

It first marks the jobs that a dead consumer of this container left `running` as
interrupted, then consumes. SIGTERM is a graceful stop: no new jobs; the running ones get
GRACEFUL_TIMEOUT to finish, then are interrupted and marked so.
"""

import logging

from app import tasks  # noqa: F401  (registers the example's tasks)
from app.job_queue import JobQueue
from deploy.settings import Settings


def main() -> None:
    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s")
    queue = JobQueue(settings)
    for job_id in queue.mark_orphans_interrupted():
        logging.getLogger("app.worker").warning("job %s was running in a consumer that died: interrupted", job_id)
    consumer = queue.huey.create_consumer(
        workers=settings.job_workers,
        worker_type=settings.job_worker_type,
        graceful_signal="TERM",
        shutdown_timeout=settings.graceful_timeout,
        # An idle consumer polls SQLite with a growing delay; huey's 10 s default would let a
        # new job wait that long. (Redis storage blocks on the queue instead of polling.)
        max_delay=1.0,
    )
    consumer.run()


if __name__ == "__main__":
    main()
