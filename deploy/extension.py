"""The stack's state in a Flask app, the Flask-extension way: `app.extensions["flask-stack"]`,
made by `deploy.init_app(app)` or on first use, so several apps (and the tests) each have
their own. Its parts (the job queue, the after-response tasks) are made by the modules that
use them, when first needed: an app that queues no job never opens the job store, and one
that uses no after-response task starts no pool."""

from collections.abc import Callable
from typing import TypeVar

from flask import Flask

from deploy.settings import Settings

EXTENSION = "flask-stack"
Part = TypeVar("Part")


class StackExtension:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.readiness_checks = []
        self._parts = {}

    def part(self, name: str, make: Callable[[Settings], Part]) -> Part:
        """The part `name` of this state, made by `make(settings)` the first time it is asked for."""
        if name not in self._parts:
            self._parts[name] = make(self.settings)
        return self._parts[name]


def stack_extension(app: Flask, settings: Settings | None = None) -> StackExtension:
    """The app's stack state, made with `settings` (default: the validated environment) if new;
    given `settings` replace those of state not yet used."""
    extension = app.extensions.get(EXTENSION)
    if extension is None:
        extension = app.extensions[EXTENSION] = StackExtension(settings or Settings.from_env())
    elif settings is not None:
        extension.settings = settings
    return extension
