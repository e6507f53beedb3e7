"""Run one registered task once, here, now: `python -m deploy.jobs.run_task TASK ['{"arg": value}']`.

For a job that must run on a fresh container or pod of its own (a Kubernetes CronJob,
deploy/k8s/cronjob.yaml; `docker run --rm IMAGE python -m deploy.jobs.run_task ...`) rather
than in the consumers: it imports JOB_MODULES as the consumer does, checks the arguments as
POST /jobs does, calls the task in this process, prints its result as JSON and exits 0; a
task that raises exits 1, an unknown task or bad arguments 2. It makes no job record: the
scheduled tasks of the consumers (`@task(cron=...)`) are the ones with records and retries.
"""

import json
import logging
import logging.config
import sys

from deploy.jobs.consumer import import_task_modules
from deploy.logs import logging_config
from deploy.settings import ConfigError, Settings

log = logging.getLogger("deploy.jobs.run_task")
USAGE = "usage: python -m deploy.jobs.run_task TASK ['{\"argument\": value, ...}']"


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(USAGE, file=sys.stderr)
        return 2
    try:
        settings = Settings.from_env()
        logging.config.dictConfig(logging_config(settings, "consumer"))
        import_task_modules(settings.job_modules)
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 2
    from deploy.jobs.registry import InvalidJob, registry  # noqa: PLC0415  (after the task modules)
    try:
        spec, args = registry.validate(argv[1], json.loads(argv[2]) if len(argv) == 3 else {}, {})
    except (ValueError, InvalidJob) as error:  # json's errors are ValueErrors
        print(f"error: {argv[1]}: {error}", file=sys.stderr)
        return 2
    except LookupError as error:  # a task's `check` that reads the app's config, which is not made here
        print(f"error: {argv[1]}: its check needs the app's config ({error}): queue it with POST /jobs instead",
              file=sys.stderr)
        return 2
    log.info("running %s once, here, with %s", spec.name, args or "no arguments")
    try:
        result = spec.function(**args)
    except Exception:
        log.exception("%s failed", spec.name)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
