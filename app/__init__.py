"""The example service: an application factory, as in Flask's tutorial. Replace it with yours."""

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from app import cpu, errors, health, jobs, jobs_api, network
from app.background import BackgroundTasks
from app.job_queue import JobQueue
from deploy.settings import Settings


def create_app(settings: Settings | None = None) -> Flask:
    """Create the app; `settings` defaults to the validated environment (deploy.settings)."""
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.config.from_mapping(
        DEBUG=False,
        JOB_MAX_SECONDS=settings.job_max_seconds,
    )
    app.extensions["background_tasks"] = BackgroundTasks(settings.background_tasks_max, app.logger)
    app.extensions["job_queue"] = JobQueue(settings)
    cpu.size_threadpool(settings.cpu_threads)

    # Exactly one proxy (nginx) stands in front: trust one hop of each X-Forwarded-* header.
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1)

    errors.register(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(jobs.bp)
    app.register_blueprint(jobs_api.bp)
    app.register_blueprint(cpu.bp)
    app.register_blueprint(network.bp)
    return app
