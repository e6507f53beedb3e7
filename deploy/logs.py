"""The logs of the stack's Python processes, as LOG_TARGET and LOG_FORMAT say, through
`logging.config.dictConfig` (gunicorn's `logconfig_dict`; the job consumer's own call):

    log (source)       written by                     files (LOG_DIR/...)      stdout
    gunicorn.access    gunicorn's workers (access_log) gunicorn/access.log      stdout
    gunicorn.error     gunicorn                        gunicorn/error.log       stderr
    app                the root logger in the workers  app/app.log              stderr
    jobs               the root logger in the consumer jobs/consumer.log        stderr

LOG_FORMAT=text keeps the lines people read; `json` is one JSON object per line
(python-json-logger), with `time`, `level`, `source`, `message` and the record's fields.
Both use the same time: ISO 8601, UTC, milliseconds. Every line written while serving a
request carries nginx's request id, and every line about a job the id of the request that
queued it (`request_id`), whichever logger wrote it. On stdout a text line begins with its
source, so that one stream can hold them all (supervisord forwards them line by line:
deploy/supervisor_container.py).
"""

import contextvars
import logging
import time
from contextlib import contextmanager

from pythonjsonlogger.json import JsonFormatter

from deploy.settings import LOG_OF, Log, Settings

REQUEST_ID = contextvars.ContextVar("request_id", default=None)  # the request being served, or the job's
JOB_ID = contextvars.ContextVar("job_id", default=None)  # the job being run (in the consumer)

ACCESS_TEXT = '%(client)s [%(asctime)s] "%(request_line)s" %(status)s %(bytes)s %(duration_ms)dms ' \
              'rid=%(request_id)s pid=<%(process)d>'
RECORD_TEXT = "%(asctime)s [%(process)d] [%(levelname)s] [rid=%(request_id)s] %(name)s: %(message)s"
JSON_FIELDS = ["asctime", "levelname", "source", "message", "name", "process", "request_id"]


def iso_time(created: float) -> str:
    """ISO 8601, UTC, with milliseconds: the time format of every log of the stack (nginx's too)."""
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}+00:00"


class TextFormatter(logging.Formatter):
    """A text line with the stack's time; `source` first when the line shares a stream with others."""

    def __init__(self, fmt: str, source: str = ""):
        super().__init__(f"{source} {fmt}" if source else fmt)

    def formatTime(self, record, datefmt=None):  # noqa: N802  (logging's name)
        return iso_time(record.created)


class JsonLineFormatter(JsonFormatter):
    """One JSON object per line: time, level, source, message, then the record's own fields."""

    def __init__(self, source: str):
        super().__init__(JSON_FIELDS, rename_fields={"asctime": "time", "levelname": "level", "name": "logger",
                                                     "process": "pid"},
                         static_fields={"source": source}, json_ensure_ascii=True)

    def formatTime(self, record, datefmt=None):  # noqa: N802
        return iso_time(record.created)


class RequestContext(logging.Filter):
    """Adds the request id (and the job id, in the consumer) to every record a handler writes."""

    def filter(self, record):
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get() or "-"
        job_id = JOB_ID.get()
        if job_id and not hasattr(record, "job_id"):
            record.job_id = job_id
        return True


@contextmanager
def job_context(job_id: str, request_id: str | None):
    """Log lines written inside carry the job's id and the id of the request that queued it."""
    tokens = JOB_ID.set(job_id), REQUEST_ID.set(request_id)
    try:
        yield
    finally:
        JOB_ID.reset(tokens[0])
        REQUEST_ID.reset(tokens[1])


def skip_unused_record_fields() -> None:
    """No log format of the stack shows a record's thread, process name or source line: logging
    then need not look them up for every record (the logging HOWTO's "Optimization"; under
    gevent a thread look-up makes an object per greenlet)."""
    logging.logThreads = False
    logging.logMultiprocessing = False
    logging._srcfile = None


def _handlers(settings: Settings, log: Log) -> dict:
    """The dictConfig handlers of one log: a file, a stream, or both (LOG_TARGET)."""
    handlers, source = {}, log.source
    json_format = settings.log_format == "json"
    if settings.logs_to_files:
        handlers[f"{source}_file"] = {
            # gunicorn reopens its own loggers' files when rotate-logs signals it (USR1); the
            # other logs' handlers see for themselves, at a stat() for each line.
            "class": "logging.FileHandler" if source.startswith("gunicorn.") else "logging.handlers.WatchedFileHandler",
            "filename": f"{settings.stack_log_dir}/{log.file}",
            "formatter": f"{source}_json" if json_format else f"{source}_text",
            "filters": ["request_context"],
        }
    if settings.logs_to_streams:
        handlers[f"{source}_stream"] = {
            "class": "logging.StreamHandler",
            "stream": f"ext://sys.{log.stream}",
            "formatter": f"{source}_json" if json_format else f"{source}_marked_text",
            "filters": ["request_context"],
        }
    return handlers


def _formatters(source: str, text_format: str) -> dict:
    return {
        f"{source}_text": {"()": TextFormatter, "fmt": text_format},
        f"{source}_marked_text": {"()": TextFormatter, "fmt": text_format, "source": source},
        f"{source}_json": {"()": JsonLineFormatter, "source": source},
    }


def logging_config(settings: Settings, process: str) -> dict:
    """dictConfig for `process`: "gunicorn" (its logs and the app's) or "consumer" (the jobs' log)."""
    if process == "gunicorn":
        logs = {"gunicorn.access": (LOG_OF["gunicorn.access"], ACCESS_TEXT),
                "gunicorn.error": (LOG_OF["gunicorn.error"], RECORD_TEXT), "root": (LOG_OF["app"], RECORD_TEXT)}
    else:
        logs = {"root": (LOG_OF["jobs"], RECORD_TEXT)}
    config = {"version": 1, "disable_existing_loggers": False, "loggers": {}, "handlers": {}, "formatters": {},
              "filters": {"request_context": {"()": RequestContext}}}
    for logger, (log, text_format) in logs.items():
        handlers = _handlers(settings, log)
        config["handlers"].update(handlers)
        config["formatters"].update(_formatters(log.source, text_format))
        level = "INFO" if logger == "gunicorn.access" else settings.log_level.upper()
        entry = {"level": level, "handlers": list(handlers)}
        if logger == "root":
            config["root"] = entry
        else:
            config["loggers"][logger] = {**entry, "propagate": False}
    return config
