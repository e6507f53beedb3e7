"""The jobs' metrics: those a consumer counts (jobs that ended), and those read from the job
store at each scrape (live jobs, scheduled tasks), the same in every container that shares
the store: sum the first across containers, take the `max` of the others."""

import logging
from collections.abc import Callable

from prometheus_client import Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from deploy.metrics import metric

log = logging.getLogger("deploy.metrics")


def count_finished_job(task: str, status: str) -> None:
    """A job ended done, failed, interrupted or canceled (the consumer's side)."""
    try:
        metric(Counter, "flask_stack_jobs_finished", "Jobs that ended, by task and status",
               ["task", "status"]).labels(task, status).inc()
    except Exception:
        log.exception("could not count a finished job")


class JobsCollector:
    """The job queue and the scheduled tasks, as the store holds them."""

    def __init__(self, open_store: Callable[[], object]):
        """`open_store()`: the job store (deploy/jobs/store.py), opened at the first scrape."""
        self.open_store = open_store
        self._store = None
        self.seen = set()  # (status, task) seen before: back to 0, not gone, when no job is left

    def collect(self):
        up = GaugeMetricFamily("flask_stack_jobs_store_up", "Whether the job store answered")
        try:
            if self._store is None:
                self._store = self.open_store()
            store = self._store
            counts, oldest, now, schedules = (store.live_counts(), store.oldest_queued(), store.now(),
                                              store.schedule_states())
        except Exception as error:
            log.warning("the job store did not answer the metrics: %s", error)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        jobs = GaugeMetricFamily("flask_stack_jobs", "Jobs scheduled, queued or running, by task",
                                 labels=["status", "task"])
        self.seen.update(counts)
        for status, task in sorted(self.seen):
            jobs.add_metric([status, task], counts.get((status, task), 0))
        yield jobs
        yield GaugeMetricFamily("flask_stack_jobs_oldest_queued_age_seconds",
                                "Seconds the oldest queued job has waited (0: none waits)",
                                value=max(0.0, now - oldest) if oldest is not None else 0.0)
        yield from self.schedule_metrics(schedules)

    @staticmethod
    def schedule_metrics(schedules: dict):
        families = {
            "runs": CounterMetricFamily("flask_stack_schedule_runs", "Ticks of a scheduled task that ran",
                                        labels=["task"]),
            "skipped": CounterMetricFamily("flask_stack_schedule_skipped",
                                           "Ticks skipped while a run of the task was live", labels=["task"]),
            "missed": CounterMetricFamily("flask_stack_schedule_missed", "Ticks missed while no consumer ran",
                                          labels=["task"]),
        }
        last_success = GaugeMetricFamily("flask_stack_schedule_last_success_timestamp_seconds",
                                         "When the task's last scheduled run ended done (0: never)", labels=["task"])
        for task, state in sorted(schedules.items()):
            for name, family in families.items():
                family.add_metric([task], getattr(state, name))
            last_success.add_metric([task], state.last_success or 0)
        yield from families.values()
        yield last_success
