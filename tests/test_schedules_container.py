"""Scheduled tasks in real containers: once per tick in one container (SQLite); once per tick
across three worker containers on one Redis, through the loss of two of them and a downtime
of all; no two runs at once without overlap; and a task defined wrongly stops the container
at its start, naming it, without a traceback."""

import re
import subprocess
import time
from collections import Counter
from datetime import datetime, timedelta

import pytest

from tests.containers import JobsClient, docker, wait_until

pytestmark = [pytest.mark.slow]


def runs_of(jobs: JobsClient, task: str) -> list[dict]:
    """Every job of `task`, through GET /jobs, page by page."""
    runs, cursor = [], None
    while True:
        status, page = jobs.request("GET", f"/jobs?task={task}&limit=500" + (f"&cursor={cursor}" if cursor else ""),
                                    None)
        assert status == 200, page
        runs += page["jobs"]
        cursor = page["next"]
        if cursor is None:
            return runs


def ticks_of(runs: list[dict]) -> list[datetime]:
    """The ticks that ran, oldest first; fails if one ran twice."""
    counted = Counter(run["scheduled_for"] for run in runs)
    twice = {tick: n for tick, n in counted.items() if n > 1}
    assert not twice, f"ticks run more than once: {twice}"
    return sorted(datetime.fromisoformat(tick) for tick in counted)


def gaps(ticks: list[datetime], interval: float) -> list[tuple[datetime, datetime]]:
    step = timedelta(seconds=interval)
    return [(a, b) for a, b in zip(ticks, ticks[1:], strict=False) if b - a != step]


def schedule_metric(container, name: str, task: str) -> float | None:
    """A schedule metric as the container's exposition serves it (METRICS_PORT, inside); None
    while it does not serve it yet (a container that has just started)."""
    try:
        exposition = container.metrics()
    except subprocess.CalledProcessError:
        return None
    match = re.search(rf'^{name}{{task="{task}"}} (\S+)$', exposition, re.M)
    return float(match[1]) if match else None


def test_one_container_runs_a_task_every_2_s_once_per_tick(ticking_image, containers):
    container = containers.start(image=ticking_image, env={"JOB_MODULES": "app,ticks.every_2s"})
    jobs = JobsClient.over_http(container.port)
    wait_until(lambda: runs_of(jobs, "every_2s"), 30, "a first run of every_2s")
    time.sleep(18)
    runs = runs_of(jobs, "every_2s")
    ticks = ticks_of(runs)
    print(f"\none container, every 2 s for 18 s after its first run: {len(ticks)} ticks run, {ticks[0]} to {ticks[-1]}")
    assert len(ticks) >= 9
    assert gaps(ticks, 2) == []
    assert all(tick.timestamp() % 2 == 0 for tick in ticks)
    assert {run["status"] for run in runs[1:]} == {"done"}  # the newest may still run


def test_three_workers_on_one_redis_run_each_tick_once_through_losses_and_a_downtime(ticking_image, containers,
                                                                                   redis_network):
    shared = {"REDIS_URL": "redis://redis:6379/0", "JOB_MODULES": "app,ticks.every_3s"}
    web = containers.start("--network", redis_network, image=ticking_image, env={**shared, "ROLE": "web"})
    workers = [containers.start("--network", redis_network, image=ticking_image, wait=False,
                                env={**shared, "ROLE": "worker"}) for _ in range(3)]
    for worker in workers:
        worker.wait_until_healthy()
    jobs = JobsClient.over_http(web.port)
    time.sleep(15)
    # Kill the consumer that ran the latest tick and one other: the third must take the ticks over.
    busy_host = next(run["worker"]["host"] for run in runs_of(jobs, "every_3s") if run["worker"])
    survivor = next(worker for worker in workers if not worker.id.startswith(busy_host))
    for worker in workers:
        if worker is not survivor:
            docker("kill", worker.id)
    killed_at = time.time()
    time.sleep(12)
    docker("stop", survivor.id, timeout=30)
    stopped_at = time.time()
    time.sleep(20)
    docker("start", survivor.id)
    restarted_at = time.time()
    wait_until(lambda: any(tick.timestamp() >= restarted_at for tick in ticks_of(runs_of(jobs, "every_3s"))), 30,
               "a tick run after the restart")

    runs = runs_of(jobs, "every_3s")
    ticks = ticks_of(runs)
    before_stop = [tick for tick in ticks if tick.timestamp() < stopped_at - 3]
    late = [tick for tick in ticks if stopped_at + 3 < tick.timestamp() < restarted_at]
    hosts = Counter(run["worker"]["host"] for run in runs if run["worker"])
    print(f"\nthree workers on Redis, every 3 s: {len(ticks)} ticks run, by {dict(hosts)}; "
          f"late runs after the downtime: {[tick.isoformat() for tick in late]}")
    # Once per tick, and no tick lost while one consumer of three was left.
    assert gaps(before_stop, 3) == [], "a tick was missed while consumers were running"
    after_kill = [run for run in runs if killed_at + 1 < datetime.fromisoformat(run["scheduled_for"]).timestamp()
                  < stopped_at - 3]
    assert len(after_kill) >= 2, "the ticks went on after two workers were killed"
    assert {(run["worker"] or {}).get("host") for run in after_kill} == {survivor.id[:12]} != {busy_host}, \
        "the ticks after the kill were not all run by the consumer left"
    # After 20 s with no consumer: at most one late run, the rest counted as missed.
    assert len(late) <= 1
    missed = wait_until(lambda: schedule_metric(survivor, "flask_stack_schedule_missed_total", "every_3s"), 10,
                        "the missed ticks counted")
    assert missed >= 4


def test_a_task_longer_than_its_interval_never_runs_twice_at_once(ticking_image, containers):
    container = containers.start(image=ticking_image, env={"JOB_MODULES": "app,ticks.five_seconds_every_2s"})
    jobs = JobsClient.over_http(container.port)
    time.sleep(18)
    runs = [run for run in runs_of(jobs, "five_seconds_every_2s") if run["started_at"]]
    spans = sorted((datetime.fromisoformat(run["started_at"]), datetime.fromisoformat(run["finished_at"] or "9999-01-01"
                                                                                        "T00:00:00+00:00"))
                   for run in runs)
    overlapping = [(a, b) for a, b in zip(spans, spans[1:], strict=False) if b[0] < a[1]]
    skipped = wait_until(lambda: schedule_metric(container, "flask_stack_schedule_skipped_total",
                                                 "five_seconds_every_2s"), 10, "the skipped ticks counted")
    print(f"\na 5 s task every 2 s for 18 s: {len(runs)} runs, {skipped:.0f} ticks skipped")
    assert len(runs) >= 2 and not overlapping, overlapping
    assert skipped >= 3


@pytest.mark.parametrize("environment, message", [
    ({"JOB_MODULES": "app,ticks.bad_cron"},
     "JOB_MODULES: ticks.bad_cron: task cleanup: cron '61 * * * *': its minute field '61': 61 is not a valid input"),
    ({"JOB_MODULES": "app,ticks.bad_every"},
     "JOB_MODULES: ticks.bad_every: task poll: every=0: expected a whole number of seconds, at least 1"),
    ({"JOB_MODULES": "app,ticks.required_arguments"},
     "task report: a scheduled task takes no arguments without defaults; report requires day"),
    ({"SCHEDULE_TIMEZONE": "Mars/Olympus"},
     "configuration error: SCHEDULE_TIMEZONE='Mars/Olympus' is not valid: expected an IANA time zone name"),
    ({"APP_MODULE": "ticks.bad_app:create_app()", "ROLE": "web"},
     "APP_MODULE ticks.bad_app:create_app(): task cleanup: cron '61 * * * *': its minute field '61'"),
])
def test_a_task_defined_wrongly_stops_the_container_at_start_naming_it(ticking_image, containers, environment,
                                                                      message):
    container = containers.start(image=ticking_image, wait=False, env={"LOG_TARGET": "stdout", **environment})
    assert container.wait_for_exit(deadline=60) in (1, 2)
    logs = container.logs()
    assert message in logs
    assert "Traceback" not in logs
