"""The example service: an application factory with blueprints, as in Flask's tutorial.
Replace this package with yours: the stack (deploy/) does not depend on it.

Importing the package registers the example's jobs (app/tasks.py) and nothing more: the job
consumer imports it for them (JOB_MODULES defaults to the module of APP_MODULE,
`app:create_app()`), and needs no Flask. Flask and the blueprints are imported in the
factory, as Flask's tutorial imports its blueprints there.
"""

from app import tasks  # noqa: F401  (registers the example's jobs)


def create_app(test_config: dict | None = None):
    """Create the app: its settings from the environment (app/config.py), then `test_config`."""
    from flask import Flask  # noqa: PLC0415  (see above: the package alone stays light)

    from app import after_response, compute, config, cpu, index, network, waiting  # noqa: PLC0415
    from deploy import init_app, json_errors  # noqa: PLC0415

    app = Flask(__name__)
    app.config.from_mapping(config.from_env())
    if test_config:
        app.config.from_mapping(test_config)

    init_app(app)       # POST/GET/DELETE /jobs for the tasks of app/tasks.py
    json_errors(app)    # an API: every error, a 404 or 405 too, is JSON

    for blueprint in (index.bp, waiting.bp, after_response.bp, compute.bp, cpu.bp, network.bp):
        app.register_blueprint(blueprint)
    return app
