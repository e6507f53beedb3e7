"""The example service: an application factory with blueprints, as in Flask's tutorial.
Replace this package with yours: the stack (deploy/) does not depend on it."""

from flask import Flask

from app import after_response, compute, config, cpu, index, network, tasks, waiting  # noqa: F401  (tasks: registers the jobs)
from deploy import jobs


def create_app(test_config: dict | None = None) -> Flask:
    """Create the app: its settings from the environment (app/config.py), then `test_config`."""
    app = Flask(__name__)
    app.config.from_mapping(config.from_env())
    if test_config:
        app.config.from_mapping(test_config)

    jobs.init_app(app)      # POST/GET/DELETE /jobs for the tasks of app/tasks.py
    jobs.json_errors(app)   # an API: every error, a 404 or 405 too, is JSON

    for blueprint in (index.bp, waiting.bp, after_response.bp, compute.bp, cpu.bp, network.bp):
        app.register_blueprint(blueprint)
    return app
