"""Scheduled tasks: their ticks (cron on a minute boundary, daylight saving time both ways,
with the clock injected), one run per tick across consumers racing in one store, overlap and
missed ticks, the schedules endpoint, a real consumer running a task every 2 s, and a task
defined wrongly, refused at start naming it."""

import statistics
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from deploy.jobs.queue import JobQueue
from deploy.jobs.registry import TaskDefinitionError, TaskRegistry
from deploy.jobs.scheduling import TickClaims
from deploy.jobs.ticks import Cron, Every
from deploy.settings import Settings
from tests import scheduled_tasks
from tests.containers import JobsClient, wait_until
from tests.support import ROOT

BERLIN = ZoneInfo("Europe/Berlin")


def utc(*fields) -> datetime:
    return datetime(*fields, tzinfo=UTC)


def test_every_ticks_on_the_whole_multiples_of_its_interval():
    assert Every(30).next_after(utc(2026, 1, 1, 0, 0, 10), BERLIN) == utc(2026, 1, 1, 0, 0, 30)
    assert Every(30).next_after(utc(2026, 1, 1, 0, 0, 30), BERLIN) == utc(2026, 1, 1, 0, 1, 0)
    assert list(Every(2).ticks(utc(2026, 1, 1), utc(2026, 1, 1, 0, 0, 7), BERLIN)) == [
        utc(2026, 1, 1, 0, 0, second) for second in (2, 4, 6)]


def test_cron_ticks_on_the_minute_and_its_next_after_the_boundary():
    every_five = Cron("*/5 * * * *")
    assert every_five.next_after(utc(2026, 5, 1, 10, 4, 59, 999999), ZoneInfo("UTC")) == utc(2026, 5, 1, 10, 5)
    assert every_five.next_after(utc(2026, 5, 1, 10, 5), ZoneInfo("UTC")) == utc(2026, 5, 1, 10, 10)
    assert Cron("0 3 * * *").next_after(utc(2026, 5, 1, 1, 0), BERLIN) == utc(2026, 5, 2, 1, 0)  # 03:00 CEST
    # POSIX cron: with both day fields restricted, a day matches either (the 1st, or a Monday).
    assert Cron("0 0 1 * 1").next_after(utc(2026, 6, 2), ZoneInfo("UTC")) == utc(2026, 6, 8)


@pytest.mark.parametrize("start, change", [(utc(2026, 3, 27), "clocks forward at 02:00 on 29 March"),
                                           (utc(2026, 10, 23), "clocks back at 03:00 on 25 October")])
def test_a_daily_job_runs_once_a_day_across_a_daylight_saving_change(start, change):
    runs = [tick.astimezone(BERLIN) for tick in Cron("30 2 * * *").ticks(start, start + timedelta(days=4), BERLIN)]
    assert [run.date() for run in runs] == [(start + timedelta(days=n)).date() for n in range(4)], change
    # 02:30 does not exist on the spring day: the tick moves forward by the gap, to 03:30.
    assert [run.strftime("%H:%M") for run in runs] in (["02:30", "02:30", "03:30", "02:30"], ["02:30"] * 4)


def test_an_hourly_job_keeps_the_hour_across_both_changes():
    for start in (utc(2026, 3, 28, 22), utc(2026, 10, 24, 22)):
        ticks = list(Cron("30 * * * *").ticks(start, start + timedelta(hours=6), BERLIN))
        assert [tick - start for tick in ticks] == [timedelta(minutes=30 + 60 * n) for n in range(6)]


def claims_day_by_day(task_options: dict, start: datetime, hours: int, step=timedelta(minutes=5)) -> list[datetime]:
    """A consumer's claims, its clock injected: every `step` for `hours`; the ticks that ran."""
    registry = TaskRegistry()

    @registry.task(**task_options)
    def scheduled() -> str:
        return "ran"

    queue = JobQueue(Settings.from_env(), registry)
    claims = TickClaims(queue, "UTC")
    spec, moment, ran = registry.specs["scheduled"], start, []
    while moment < start + timedelta(hours=hours):
        state = queue.store.schedule_states().get("scheduled")
        if claims.claim(spec, state, moment.timestamp()) == "ran":
            run = queue.record(queue.store.schedule_states()["scheduled"].last_job)
            ran.append(datetime.fromisoformat(run["scheduled_for"]))
        moment += step
    return ran


@pytest.mark.parametrize("start", [utc(2026, 3, 27, 12), utc(2026, 10, 23, 12)])
def test_the_consumer_s_claims_run_a_daily_job_once_across_a_daylight_saving_change(start):
    ran = claims_day_by_day({"cron": "30 2 * * *", "timezone": "Europe/Berlin", "overlap": True}, start, 96)
    assert [tick.astimezone(BERLIN).date() for tick in ran] == [(start + timedelta(days=n)).date() + timedelta(days=1)
                                                               for n in range(4)]


def test_a_tick_is_run_once_then_skipped_while_its_run_is_live_and_missed_ticks_run_once_late():
    registry = TaskRegistry()

    @registry.task(every=60, grace=10)
    def minutely() -> str:
        return "ran"

    queue = JobQueue(Settings.from_env(), registry)
    claims, spec = TickClaims(queue, "UTC"), registry.specs["minutely"]
    start = utc(2026, 1, 1, 12).timestamp()

    def claim(at: float) -> str:
        return claims.claim(spec, queue.store.schedule_states().get("minutely"), at)

    assert claim(start) == "moved"  # seen for the first time: from the next tick on
    assert claim(start + 30) == "not due"
    assert claim(start + 60.5) == "ran"
    assert claim(start + 61) == "not due"
    assert claim(start + 120.5) == "skipped"  # the first run is still queued (no consumer here)
    state = queue.store.schedule_states()["minutely"]
    assert (state.runs, state.skipped, state.missed) == (1, 1, 0)
    queue.huey.execute(queue.huey.dequeue())  # the run ends
    # Down for ten minutes: ticks at +180 ... +720 missed; the latest one, 5 s old, runs once.
    assert claim(start + 725) == "ran"
    state = queue.store.schedule_states()["minutely"]
    assert (state.runs, state.skipped, state.missed) == (2, 1, 9)
    assert queue.record(state.last_job)["scheduled_for"] == "2026-01-01T12:12:00.000+00:00"
    queue.huey.execute(queue.huey.dequeue())
    # Down again, and back 30 s after the latest tick (+1320): past its grace, nothing runs.
    assert claim(start + 1350) == "moved"
    state = queue.store.schedule_states()["minutely"]
    assert (state.runs, state.missed) == (2, 9 + 10)
    assert state.last_success is not None


@pytest.mark.parametrize("options, message", [
    ({"cron": "61 * * * *"}, "task job: cron '61 * * * *': its minute field '61': 61 is not a valid input"),
    ({"cron": "0 3 * *"}, "task job: cron '0 3 * *' has 4 fields: it needs 5"),
    ({"cron": "0 0 31 2 *"}, "task job: cron '0 0 31 2 *' matches no date"),
    ({"every": 0}, "task job: every=0: expected a whole number of seconds, at least 1"),
    ({"every": 1.5}, "task job: every=1.5: expected a whole number of seconds"),
    ({"every": timedelta(milliseconds=1500)}, "task job: every=datetime.timedelta(seconds=1, microseconds=500000)"),
    ({"cron": "0 3 * * *", "timezone": "Mars/Olympus"}, "task job: unknown time zone 'Mars/Olympus'"),
    ({"cron": "0 3 * * *", "every": 5}, "task job: cron and every are both given"),
    ({"overlap": True}, "task job: timezone, overlap and grace are for a scheduled task"),
])
def test_a_schedule_that_cannot_work_is_refused_naming_the_task_and_the_value(options, message):
    with pytest.raises(TaskDefinitionError) as refused:
        @TaskRegistry().task(**options)
        def job() -> None:
            pass
    assert str(refused.value).startswith(message)


def test_a_scheduled_task_takes_no_arguments_without_defaults():
    with pytest.raises(TaskDefinitionError, match=r"^task report: a scheduled task takes no arguments without "
                                                  r"defaults; report requires day$"):
        @TaskRegistry().task(cron="0 3 * * *")
        def report(day: str) -> None:
            pass


def test_the_consumer_refuses_a_bad_schedule_at_start_naming_it_without_a_traceback(consumer, tmp_path):
    (tmp_path / "bad_schedule.py").write_text("from deploy import task\n\n@task(cron='61 * * * *')\n"
                                              "def cleanup() -> None:\n    pass\n")
    process = consumer(JOB_MODULES="bad_schedule", PYTHONPATH=f"{tmp_path}:{ROOT}")
    assert process.wait(timeout=15) == 2
    output = open(process.log_path).read()
    assert ("configuration error: JOB_MODULES: bad_schedule: task cleanup: cron '61 * * * *': "
            "its minute field '61': 61 is not a valid input") in output
    assert "Traceback" not in output


def test_a_consumer_runs_a_task_every_2_s_once_per_tick(consumer):
    consumer(JOB_MODULES="tests.scheduled_tasks")
    client = JobsClient.of_flask(scheduled_tasks.create_app().test_client())

    def runs():
        status, page = client.request("GET", "/jobs?task=every_2s&limit=500", None)
        return [job for job in page["jobs"] if job["status"] == "done"]
    done = wait_until(lambda: len(found := runs()) >= 5 and found, 30, "five runs of every_2s")
    ticks = sorted(datetime.fromisoformat(job["scheduled_for"]) for job in done)
    assert len(set(ticks)) == len(ticks), "a tick ran twice"
    assert all(tick.microsecond == 0 for tick in ticks)
    assert ticks[-1] - ticks[0] == timedelta(seconds=2 * (len(ticks) - 1)), f"a tick was skipped: {ticks}"
    # Claimed as soon as due: each turn begins just after a whole second (huey's own loop keeps
    # the phase of the consumer's start, up to a second late).
    lags = [(datetime.fromisoformat(job["created_at"]) - datetime.fromisoformat(job["scheduled_for"])).total_seconds()
            for job in done]
    assert statistics.median(lags) < 0.3, lags


def test_the_schedules_endpoint_lists_each_task_with_its_next_and_last_run(consumer, monkeypatch):
    monkeypatch.setenv("SCHEDULE_TIMEZONE", "America/New_York")
    client = scheduled_tasks.create_app().test_client()
    before = {entry["task"]: entry for entry in client.get("/jobs/schedules").json["schedules"]}
    assert before["nightly_report"] == {
        "task": "nightly_report", "cron": "0 3 * * *", "every": None, "timezone": "America/New_York",
        "overlap": False, "next_run": before["nightly_report"]["next_run"], "last_run": None, "runs": 0,
        "skipped": 0, "missed": 0, "last_success": None}
    next_run = datetime.fromisoformat(before["nightly_report"]["next_run"]).astimezone(ZoneInfo("America/New_York"))
    assert next_run.strftime("%H:%M") == "03:00" and next_run - datetime.now(UTC) <= timedelta(days=1)
    assert before["berlin_night"]["timezone"] == "Europe/Berlin"
    assert (before["every_2s"]["every"], before["every_2s"]["timezone"]) == (2, None)
    consumer(JOB_MODULES="tests.scheduled_tasks")
    def every_2s_ran_twice():
        entry = next(e for e in client.get("/jobs/schedules").json["schedules"] if e["task"] == "every_2s")
        return entry["runs"] >= 2 and entry
    entry = wait_until(every_2s_ran_twice, 20, "every_2s run twice")
    assert entry["last_run"]["status"] in ("queued", "running", "done")
    assert datetime.fromisoformat(entry["next_run"]) > datetime.fromisoformat(entry["last_run"]["scheduled_for"])


