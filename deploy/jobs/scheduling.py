"""What every consumer does each second, beside running jobs: huey's scheduler, which also
starts the jobs whose time has come, claims the ticks of the scheduled tasks, ends the jobs
whose lease expired and now and then deletes expired records. It does so where huey reads
its schedule (a process of its own with JOB_WORKER_TYPE=process, else a thread), with huey's
connection to the store: the process that huey forks its workers from then has no other
thread inside SQLite, whose locks a child must not inherit.

Scheduled tasks (`@task(cron=...)`, `@task(every=...)`) run once per tick however many
consumers share the store, with no leader: each consumer, each second, computes the task's
due ticks from the last tick claimed (the store's, shared) and claims the latest in one
transaction that moves the last tick only if no consumer moved it since. The winner's
transaction also inserts the run's record and huey's message. So a tick is run once, and
losing a consumer delays no tick by more than a second or two: the others claim it. Each turn
begins just after a whole second of the store's clock, so that a tick is claimed as soon as it
is due.

- Overlap: while a run of the task is scheduled, queued or running, a tick is skipped,
  counted and logged, unless the task has `overlap=True`.
- Missed ticks (no consumer ran): at most one late run, of the latest tick, and only if it is
  at most the task's grace old (default: the smaller of its interval and an hour); the
  others are counted as missed and logged. A task seen for the first time starts with the
  next tick.
"""

import logging
import time
from datetime import UTC, datetime
from itertools import islice

from huey.consumer import Scheduler

from deploy.jobs.queue import JobQueue, iso
from deploy.jobs.registry import TaskSpec
from deploy.jobs.store import ScheduleState, Tick
from deploy.jobs.ticks import zone_named

log = logging.getLogger("deploy.jobs.consumer")
RECORD_CLEANUP_EVERY = 60  # seconds between two deletions of expired records
TURN_AFTER_SECOND = 0.05  # each turn begins this long after a whole second of the store's clock
MISSED_COUNTED = 100_000  # missed ticks counted one by one after a downtime, at most


class TickClaims:
    """The claims of one consumer for the scheduled tasks it knows (module docstring)."""

    def __init__(self, queue: JobQueue, timezone: str):
        self.queue = queue
        self.zone = zone_named(timezone)
        self._next = {}  # task -> (its last tick, the tick after it): computed once per tick
        self.clock_offset = 0.0  # the store's clock less this host's, as last seen

    def claim_due(self) -> None:
        specs = self.queue.registry.scheduled()
        if not specs:
            return
        states = self.queue.store.schedule_states()
        now = self.queue.store.now()
        self.clock_offset = now - time.time()
        for spec in specs:
            self.claim(spec, states.get(spec.name), now)

    def next_tick(self, spec: TaskSpec, after: float) -> datetime | None:
        cached = self._next.get(spec.name)
        if cached is None or cached[0] != after:
            cached = self._next[spec.name] = (after, spec.schedule.next_after(datetime.fromtimestamp(after, UTC),
                                                                               self.zone_of(spec)))
        return cached[1]

    def zone_of(self, spec: TaskSpec):
        return zone_named(spec.timezone) if spec.timezone else self.zone

    def claim(self, spec: TaskSpec, state: ScheduleState | None, now: float) -> str:
        if state is None:  # seen for the first time: its ticks count from now on
            return self.queue.store.claim_tick(Tick(spec.name, None, now))
        moment = datetime.fromtimestamp(now, UTC)
        upcoming = self.next_tick(spec, state.last_tick)
        if upcoming is None or upcoming > moment:
            return "not due"
        last = datetime.fromtimestamp(state.last_tick, UTC)
        zone = self.zone_of(spec)
        due = list(islice(spec.schedule.ticks(last, moment, zone), MISSED_COUNTED))
        latest = due[-1]
        if len(due) == MISSED_COUNTED:  # a long downtime: the latest tick is past the ones counted
            window_start = datetime.fromtimestamp(max(state.last_tick, now - spec.late_grace() - 1), UTC)
            latest = max(spec.schedule.ticks(window_start, moment, zone), default=latest)
        on_time = (moment - latest).total_seconds() <= spec.late_grace()
        missed = len(due) - on_time
        run = None
        if on_time:
            record, message = self.queue.new_record(spec, {}, now, "queued", scheduled_for=iso(latest.timestamp()))
            run = (record, now, message)
        outcome = self.queue.store.claim_tick(Tick(spec.name, state.last_tick, latest.timestamp(), missed, run,
                                                   spec.overlap))
        if outcome == "lost":
            return outcome
        if missed:
            log.warning("task %s: %d tick(s) missed while no consumer ran, up to %s%s", spec.name, missed,
                        iso(due[-1 - on_time].timestamp()) if len(due) > on_time else "-",
                        f"; running the tick of {iso(latest.timestamp())} late" if outcome == "ran" else "")
        if outcome == "ran":
            log.info("task %s: tick %s: job %s queued", spec.name, iso(latest.timestamp()), run[0]["id"])
        elif outcome == "skipped":
            log.warning("task %s: tick %s skipped: a run of it is still scheduled, queued or running "
                        "(overlap=True allows it)", spec.name, iso(latest.timestamp()))
        return outcome


class StackScheduler(Scheduler):
    """huey's scheduler, which also keeps the job records and claims ticks (module docstring)."""

    def __init__(self, ticks: TickClaims, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ticks = ticks
        self.next_check = self.next_cleanup = 0.0

    def loop(self, now=None):
        queue = self.ticks.queue
        try:
            queue.start_due_jobs()
            self.ticks.claim_due()
            if time.monotonic() >= self.next_check:
                self.next_check = time.monotonic() + max(1.0, queue.settings.job_lease_seconds / 4)
                queue.end_expired_leases()
            if time.monotonic() >= self.next_cleanup:
                self.next_cleanup = time.monotonic() + RECORD_CLEANUP_EVERY
                deleted = queue.store.delete_expired(queue.store.now())
                if deleted:
                    log.info("deleted %d job records past JOB_RESULT_TTL", deleted)
        except Exception:  # the store is unreachable for now: the next turn tries again
            log.exception("could not check the job records")
        super().loop(now)

    def sleep_for_interval(self, start_ts, nseconds):
        """Until just after the next whole second of the store's clock, where every tick falls,
        rather than huey's one second after this turn began, at the phase of the consumer's start:
        a tick is claimed as soon as it is due, and a turn late by up to almost a second still
        finds it the latest due (with `every=1`, a turn that found two would count one missed)."""
        phase = (time.time() + self.ticks.clock_offset) % 1
        self.stop_flag.wait((TURN_AFTER_SECOND - phase) % 1)
