"""Scheduled tasks for the tests: the consumer processes of the tests import this module
(JOB_MODULES=tests.scheduled_tasks), and the tests' Flask app too (`create_app`)."""

import time

from flask import Flask

from deploy import init_app, task


@task(every=2)  # not 1: a turn a second late (a loaded machine) would then count a tick missed
def every_2s() -> float:
    return time.time()


@task(cron="0 3 * * *")
def nightly_report(pages: int = 1) -> dict:
    return {"pages": pages}


@task(cron="30 2 * * *", timezone="Europe/Berlin")
def berlin_night() -> str:
    return "done"


def create_app() -> Flask:
    app = Flask("schedule_tests")
    init_app(app)
    return app
