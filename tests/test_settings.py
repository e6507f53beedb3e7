import pytest

from deploy.settings import ConfigError, Settings, default_web_concurrency, usable_cpus


def test_defaults_are_safe():
    settings = Settings.from_env({})
    assert settings.app_module == "app.wsgi:app"
    assert settings.trusted_proxies == ()
    assert settings.log_level == "info"
    assert settings.graceful_timeout < 10  # inside Docker's default stop timeout
    assert settings.proxy_read_timeout > settings.job_max_seconds
    assert 1 <= settings.web_concurrency == default_web_concurrency() <= 8


def test_empty_value_means_default():
    assert Settings.from_env({"WEB_CONCURRENCY": ""}) == Settings.from_env({})


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
    ("TRUSTED_PROXIES", "10.0.0.0/8, 192.168.1.10", ("10.0.0.0/8", "192.168.1.10/32")),
    ("TRUSTED_PROXIES", "2001:db8::/32", ("2001:db8::/32",)),
    ("JOB_MAX_SECONDS", "0.5", 0.5),
    ("BACKGROUND_TASKS_MAX", "1", 1),
    ("MAX_REQUESTS", "0", 0),
    ("LOG_ROTATE_SIZE", "0", 0),
    ("LOG_ROTATE_SIZE", "512", 512),
    ("LOG_ROTATE_SIZE", "2M", 2 * 1024 * 1024),
    ("LOG_ROTATE_KEEP", "30", 30),
])
def test_accepted_values(name, raw, expected):
    assert getattr(Settings.from_env({name: raw}), name.lower()) == expected


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
    ("JOB_MAX_SECONDS", "nan", "a number greater than 0 and at most 86400"),
    ("JOB_MAX_SECONDS", "inf", "a number greater than 0 and at most 86400"),
    ("JOB_MAX_SECONDS", "0", "a number greater than 0 and at most 86400"),
    ("BACKGROUND_TASKS_MAX", "none", "a whole number from 1 to 10000"),
])
def test_rejected_values_name_the_variable_and_what_it_accepts(name, raw, accepted):
    with pytest.raises(ConfigError) as error:
        Settings.from_env({name: raw})
    assert str(error.value).startswith(f"{name}={raw!r} is not valid: expected {accepted}")


def test_every_bad_variable_is_reported_at_once():
    with pytest.raises(ConfigError) as error:
        Settings.from_env({"WEB_CONCURRENCY": "abc", "LOG_LEVEL": "loud", "TIMEOUT": "30"})
    lines = str(error.value).splitlines()
    assert [line.split("=")[0] for line in lines] == ["WEB_CONCURRENCY", "LOG_LEVEL"]


def test_the_readme_documents_every_variable():
    from pathlib import Path
    from deploy.settings import VARIABLES
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    undocumented = [v.name for v in VARIABLES if f"| `{v.name}` |" not in readme]
    assert undocumented == []
