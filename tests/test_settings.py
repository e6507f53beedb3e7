import re

import pytest

from deploy.settings import VARIABLES, ConfigError, Settings, default_web_concurrency, usable_cpus
from tests.support import ROOT

# The image's folders, as its Dockerfile sets them.
IMAGE = {"STACK_LOG_DIR": "/var/log/app", "STACK_RUN_DIR": "/run/flask-stack", "STACK_DATA_DIR": "/var/lib/app"}


def settings_from(**environment) -> Settings:
    return Settings.from_env({**IMAGE, **environment})


def test_defaults_are_safe():
    settings = settings_from()
    assert settings.app_module == "app:create_app()"
    assert settings.job_modules == ("app",)  # the module of APP_MODULE
    assert settings.trusted_proxies == ()
    assert settings.static_path == ""  # nginx serves no folder unless told
    assert settings.log_level == "info"
    assert settings.graceful_timeout < 10  # inside Docker's default stop timeout
    assert settings.job_database == "/var/lib/app/jobs.db"
    assert settings.secret_key == ""
    assert settings.preload_app is False  # each worker imports the app: `reload app` is a plain HUP
    assert 1 <= settings.web_concurrency == default_web_concurrency() <= 8


def test_the_image_folders_are_named_once_in_the_dockerfile():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dict(re.findall(r"(STACK_\w+_DIR)=(/[\w/-]+)", dockerfile)) == IMAGE
    image_code = [file for file in [*ROOT.glob("*.*"), *ROOT.glob("deploy/*"), *ROOT.glob("app/*")]
                  if file.is_file() and file.suffix in ("", ".py", ".sh", ".conf")]
    for path in IMAGE.values():  # nowhere else in the image's code: everything reads the variables
        spelled = [str(file.relative_to(ROOT)) for file in image_code if path in file.read_text()]
        assert spelled == [], f"{path} is spelled in {spelled}"


def test_outside_the_image_the_folders_must_be_given():
    with pytest.raises(ConfigError, match="STACK_RUN_DIR='' is not valid: expected an absolute path"):
        Settings.from_env({})


def test_job_modules_follow_app_module_unless_given():
    assert settings_from(APP_MODULE="myservice:create_app()").job_modules == ("myservice",)
    assert settings_from(APP_MODULE="myservice.wsgi:app", JOB_MODULES="myservice.tasks, myservice.reports"
                         ).job_modules == ("myservice.tasks", "myservice.reports")


def test_empty_value_means_default():
    assert settings_from(WEB_CONCURRENCY="") == settings_from()


def test_a_secret_is_read_from_its_file(tmp_path):
    secret = tmp_path / "redis_url"
    secret.write_text("redis://:s3cret@redis:6379/0\n")
    assert settings_from(REDIS_URL_FILE=str(secret)).redis_url == "redis://:s3cret@redis:6379/0"


def test_a_secret_given_twice_or_unreadable_is_an_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match="REDIS_URL and REDIS_URL_FILE are both set: set only one of them"):
        settings_from(REDIS_URL="redis://a", REDIS_URL_FILE=str(tmp_path))
    with pytest.raises(ConfigError, match=r"SECRET_KEY_FILE='/run/secrets/nope' cannot be read: No such file"):
        settings_from(SECRET_KEY_FILE="/run/secrets/nope")


def test_web_concurrency_follows_usable_cpus():
    assert default_web_concurrency() == min(usable_cpus(), 8)
    assert usable_cpus() >= 1


@pytest.mark.parametrize("name, raw, expected", [
    ("WEB_CONCURRENCY", "3", 3),
    ("WORKER_CONNECTIONS", "2000", 2000),
    ("TIMEOUT", "120", 120),
    ("GRACEFUL_TIMEOUT", "20", 20),
    ("KEEP_ALIVE", "0", 0),
    ("LOG_LEVEL", "WARNING", "warning"),
    ("APP_MODULE", "myservice.wsgi:application", "myservice.wsgi:application"),
    ("APP_MODULE", "myservice:create_app()", "myservice:create_app()"),
    ("CLIENT_MAX_BODY_SIZE", "512K", 512 * 1024),
    ("CLIENT_MAX_BODY_SIZE", "0", 0),
    ("PROXY_READ_TIMEOUT", "300", 300),
    ("STATIC_PATH", "/srv/myservice/static/", "/srv/myservice/static"),
    ("STATIC_URL", "/assets/v2/", "/assets/v2/"),
    ("JOB_LEASE_SECONDS", "5", 5),
    ("ALLOWED_HOSTS", "API.example.com, *.example.org", ("api.example.com", "*.example.org")),
    ("CLIENT_MAX_CONNECTIONS", "0", 0),
    ("CLIENT_RATE_LIMIT", "20/s", "20r/s"),
    ("CLIENT_RATE_LIMIT", "600/M", "600r/m"),
    ("DRAIN_SECONDS", "15", 15),
    ("LOG_TARGET", "Both", "both"),
    ("METRICS_PORT", "0", 0),
    ("JOB_RESULT_TTL", "0", 0),
    ("TRUSTED_PROXIES", "10.0.0.0/8, 192.168.1.10", ("10.0.0.0/8", "192.168.1.10/32")),
    ("TRUSTED_PROXIES", "2001:db8::/32", ("2001:db8::/32",)),
    ("BACKGROUND_TASKS_MAX", "1", 1),
    ("MAX_REQUESTS", "0", 0),
    ("LOG_ROTATE_SIZE", "0", 0),
    ("LOG_ROTATE_SIZE", "512", 512),
    ("LOG_ROTATE_SIZE", "2M", 2 * 1024 * 1024),
    ("LOG_ROTATE_KEEP", "30", 30),
    ("PRELOAD_APP", "true", True),
    ("PRELOAD_APP", " TRUE ", True),
    ("PRELOAD_APP", "false", False),
])
def test_accepted_values(name, raw, expected):
    assert getattr(settings_from(**{name: raw}), name.lower()) == expected


@pytest.mark.parametrize("name, raw, accepted", [
    ("WEB_CONCURRENCY", "abc", "a whole number from 1 to 64"),
    ("WEB_CONCURRENCY", "0", "a whole number from 1 to 64"),
    ("WEB_CONCURRENCY", "-2", "a whole number from 1 to 64"),
    ("WEB_CONCURRENCY", "2.5", "a whole number from 1 to 64"),
    ("WORKER_CONNECTIONS", "lots", "a whole number from 1 to 100000"),
    ("TIMEOUT", "0", "a whole number from 1 to 3600"),
    ("GRACEFUL_TIMEOUT", "1e3", "a whole number from 1 to 3600"),
    ("KEEP_ALIVE", "-1", "a whole number from 0 to 3600"),
    ("LOG_LEVEL", "verbose", "one of debug, info, warning, error, critical"),
    ("APP_MODULE", "app/wsgi.py", "module:variable"),
    ("APP_MODULE", "app.wsgi", "module:variable"),
    ("CLIENT_MAX_BODY_SIZE", "10 MB", "a size in bytes"),
    ("MAX_REQUESTS", "-1", "a whole number from 0 to 10000000"),
    ("LOG_ROTATE_SIZE", "1t", "a size in bytes with an optional k, m or g suffix"),
    ("LOG_ROTATE_KEEP", "0", "a whole number from 1 to 1000"),
    ("PROXY_READ_TIMEOUT", "forever", "a whole number from 1 to 86400"),
    ("TRUSTED_PROXIES", "10.0.0.0/33", "IP addresses or CIDR networks"),
    ("TRUSTED_PROXIES", "loadbalancer.local", "IP addresses or CIDR networks"),
    ("STATIC_PATH", "static", "an absolute path of letters, digits"),
    ("STATIC_PATH", "/srv/a b", "an absolute path of letters, digits"),
    ("STATIC_PATH", "/srv/x;return 200", "an absolute path of letters, digits"),
    ("STATIC_URL", "/static", "a URL path that starts and ends with /"),
    ("STATIC_URL", "/a b/", "a URL path that starts and ends with /"),
    ("JOB_MODULES", "my-service.tasks", "Python module names separated by commas"),
    ("JOB_LEASE_SECONDS", "1", "a whole number from 3 to 86400"),
    ("ALLOWED_HOSTS", "example.com/path", "host names or *.domain patterns"),
    ("ALLOWED_HOSTS", "ex*ample.com", "host names or *.domain patterns"),
    ("ALLOWED_HOSTS", "example.com;return 200", "host names or *.domain patterns"),
    ("CLIENT_RATE_LIMIT", "20", "requests a second or a minute"),
    ("CLIENT_RATE_LIMIT", "0/s", "requests a second or a minute"),
    ("DRAIN_SECONDS", "-1", "a whole number from 0 to 3600"),
    ("METRICS_PORT", "70000", "a port from 1 to 65535 other than 80"),
    ("BACKGROUND_TASKS_MAX", "none", "a whole number from 1 to 10000"),
    ("PRELOAD_APP", "yes", "true or false"),
    ("PRELOAD_APP", "1", "true or false"),
])
def test_rejected_values_name_the_variable_and_what_it_accepts(name, raw, accepted):
    with pytest.raises(ConfigError) as error:
        settings_from(**{name: raw})
    assert str(error.value).startswith(f"{name}={raw!r} is not valid: expected {accepted}")


def test_every_bad_variable_is_reported_at_once():
    with pytest.raises(ConfigError) as error:
        settings_from(WEB_CONCURRENCY="abc", LOG_LEVEL="loud", TIMEOUT="30")
    lines = str(error.value).splitlines()
    assert [line.split("=")[0] for line in lines] == ["WEB_CONCURRENCY", "LOG_LEVEL"]


def test_the_docs_document_every_variable():
    reference = (ROOT / "docs" / "configuration.md").read_text()
    undocumented = [v.name for v in VARIABLES if f"| `{v.name}` |" not in reference]
    assert undocumented == []
