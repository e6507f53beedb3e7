"""The stack's state in a Flask app, the Flask-extension way: `app.extensions["flask-stack"]`,
made by `deploy.jobs.init_app(app)` or on first use, so several apps (and the tests) each
have their own. Nothing is made before it is needed: an app that queues no job never opens
the job store, and one that uses no after-response task starts no pool."""

import logging

from flask import Flask

from deploy.settings import Settings

EXTENSION = "flask-stack"


class StackExtension:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.readiness_checks = []
        self._queue = None
        self._background = None

    @property
    def queue(self):
        """The job queue (deploy/jobs/queue.py)."""
        if self._queue is None:
            from deploy.jobs.queue import JobQueue  # noqa: PLC0415  (huey only for apps that queue jobs)
            self._queue = JobQueue(self.settings)
        return self._queue

    @property
    def background(self):
        """The after-response tasks of this worker (deploy/background.py)."""
        if self._background is None:
            from deploy.background import BackgroundTasks  # noqa: PLC0415
            self._background = BackgroundTasks(self.settings.background_tasks_max,
                                               logging.getLogger("deploy.background"))
        return self._background


def stack_extension(app: Flask, settings: Settings | None = None) -> StackExtension:
    """The app's stack state, made with `settings` (default: the validated environment) if new;
    given `settings` replace those of state not yet used."""
    extension = app.extensions.get(EXTENSION)
    if extension is None:
        extension = app.extensions[EXTENSION] = StackExtension(settings or Settings.from_env())
    elif settings is not None:
        extension.settings = settings
    return extension
