"""deploy/logs.py: the Python logs' lines in text and JSON, the request id on every line, and
where each log goes for each LOG_TARGET."""

import json
import logging
import logging.handlers
import re
from datetime import timedelta
from types import SimpleNamespace

import pytest

from deploy.access_log import AccessLog
from deploy.logs import (
    REQUEST_ID,
    JsonLineFormatter,
    RequestContext,
    TextFormatter,
    job_context,
    logging_config,
)
from deploy.settings import Settings
from tests.support import ISO_TIME

HOSTILE = 'quote " backslash \\ newline \n return \r tab \t nul \x00 bell \x07 del \x7f latin-1 \xff\xfe ok'


def record(message: str, **extra) -> logging.LogRecord:
    entry = logging.LogRecord("myservice.views", logging.WARNING, __file__, 1, message, None, None)
    entry.__dict__.update(extra)
    RequestContext().filter(entry)
    return entry


def test_a_json_line_is_one_whole_object_with_the_fields_whatever_the_message():
    line = JsonLineFormatter("app").format(record(HOSTILE))
    assert "\n" not in line and "\r" not in line
    fields = json.loads(line)
    assert fields["message"] == HOSTILE
    assert ISO_TIME.fullmatch(fields["time"])
    assert (fields["level"], fields["source"], fields["logger"]) == ("WARNING", "app", "myservice.views")
    assert line.isascii()  # non-ASCII escaped: a reader that expects UTF-8 or ASCII gets whole lines


def test_a_field_cannot_be_forged_from_the_message():
    fields = json.loads(JsonLineFormatter("app").format(record('x", "level": "DEBUG", "source": "nginx.access')))
    assert (fields["level"], fields["source"]) == ("WARNING", "app")


def test_text_lines_use_the_same_time_and_name_their_source_on_a_shared_stream():
    hello = record("hello")
    plain = TextFormatter("%(asctime)s %(levelname)s %(message)s").format(hello)
    marked = TextFormatter("%(asctime)s %(levelname)s %(message)s", source="app").format(hello)
    assert ISO_TIME.fullmatch(plain.split()[0])
    assert marked == f"app {plain}"


def test_every_line_carries_the_request_id_and_a_job_line_the_job_id_too():
    REQUEST_ID.set("abc123")
    assert record("served").request_id == "abc123"
    with job_context("job-1", "def456"):
        line = record("ran")
        assert (line.request_id, line.job_id) == ("def456", "job-1")
    assert record("served").request_id == "abc123"
    REQUEST_ID.set(None)
    assert record("outside any request").request_id == "-"


def test_gunicorn_access_lines_are_records_with_the_request_fields():
    logger = AccessLog(SimpleNamespace(loglevel="info", accesslog="-", errorlog="-", syslog=False,
                                       capture_output=False, logconfig_dict={"version": 1}, logconfig=None,
                                       logconfig_json=None, disable_redirect_access_to_syslog=False,
                                       user=0, group=0))
    request = SimpleNamespace(headers=[("X-REAL-IP", "203.0.113.9"), ("X-REQUEST-ID", "rid42"),
                                       ("X-FORWARDED-FOR", "6.6.6.6, 203.0.113.9"), ("USER-AGENT", HOSTILE)])
    response = SimpleNamespace(status="404 NOT FOUND", sent=155)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/\xff\"", "QUERY_STRING": "a=%00",
               "RAW_URI": "/%FF%22?a=%00", "SERVER_PROTOCOL": "HTTP/1.1"}
    captured = logging.handlers.BufferingHandler(10)
    logger.access_log.addHandler(captured)
    logger.access(response, request, environ, timedelta(milliseconds=12))
    entry = captured.buffer[-1]
    fields = json.loads(JsonLineFormatter("gunicorn.access").format(entry))
    assert {key: fields[key] for key in ("method", "path", "query", "status", "bytes", "client", "forwarded_for",
                                         "request_id", "user_agent")} == {
        "method": "GET", "path": "/\xff\"", "query": "a=%00", "status": 404, "bytes": 155, "client": "203.0.113.9",
        "forwarded_for": "6.6.6.6, 203.0.113.9", "request_id": "rid42", "user_agent": HOSTILE}
    assert fields["duration"] == 0.012
    text = TextFormatter(logging_config_text("gunicorn.access")).format(entry)
    assert re.fullmatch(r'203\.0\.113\.9 \[\S+\] "GET /%FF%22\?a=%00 HTTP/1\.1" 404 155 12ms rid=rid42 pid=<\d+>', text)


def logging_config_text(source: str) -> str:
    config = logging_config(Settings.from_env(), "gunicorn")
    return config["formatters"][f"{source}_text"]["fmt"]


@pytest.mark.parametrize("target, handlers", [
    ("files", {"gunicorn.access_file", "gunicorn.error_file", "app_file"}),
    ("stdout", {"gunicorn.access_stream", "gunicorn.error_stream", "app_stream"}),
    ("both", {"gunicorn.access_file", "gunicorn.error_file", "app_file",
              "gunicorn.access_stream", "gunicorn.error_stream", "app_stream"}),
])
def test_each_log_goes_to_its_file_its_stream_or_both(monkeypatch, target, handlers):
    monkeypatch.setenv("LOG_TARGET", target)
    config = logging_config(Settings.from_env(), "gunicorn")
    assert set(config["handlers"]) == handlers
    streams = {name: handler["stream"] for name, handler in config["handlers"].items() if "stream" in handler}
    assert all(stream == ("ext://sys.stdout" if "access" in name else "ext://sys.stderr")
               for name, stream in streams.items())
    consumer = logging_config(Settings.from_env(), "consumer")
    assert {name.split("_")[0] for name in consumer["handlers"]} == {"jobs"}
