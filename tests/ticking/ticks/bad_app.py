"""An app whose package defines a scheduled task wrongly: gunicorn cannot load it."""

from flask import Flask

from ticks import bad_cron  # noqa: F401


def create_app() -> Flask:
    return Flask(__name__)
