"""Validate the environment, then write the nginx settings that come from it.

Run by the entrypoint before anything starts: `python -m deploy.configure [OUTPUT_DIR]`.
Exit status 2 and one line per bad variable on stderr when the configuration is unusable.
nginx cannot read environment variables, so nginx.conf includes the two files written here.
On stdout: which supervisord programs start for ROLE, as NAME=true|false words for the
entrypoint to export (supervisord.conf reads them as %(ENV_NAME)s).
"""

import os
import sys

from deploy.settings import RUN_DIR, ConfigError, Settings

# nginx's `info` reports every client connection closing: LOG_LEVEL=info means its `notice`.
NGINX_LOG_LEVELS = {"info": "notice", "warning": "warn", "critical": "crit"}


def nginx_main_settings(settings: Settings) -> str:
    level = NGINX_LOG_LEVELS.get(settings.log_level, settings.log_level)
    return (
        f"error_log /var/log/app/nginx/error.log {level};\n"
        # A stop or reload closes connections still open after this, so `docker stop` ends in time.
        f"worker_shutdown_timeout {settings.graceful_timeout}s;\n"
    )


def nginx_http_settings(settings: Settings) -> str:
    lines = [
        f"client_max_body_size {settings.client_max_body_size};",
        f"keepalive_timeout {settings.keep_alive}s;",
        f"proxy_read_timeout {settings.proxy_read_timeout}s;",
    ]
    if settings.trusted_proxies:
        # Behind a trusted load balancer the client is the rightmost untrusted X-Forwarded-For entry.
        lines += [f"set_real_ip_from {network};" for network in settings.trusted_proxies]
        lines += ["real_ip_header X-Forwarded-For;", "real_ip_recursive on;"]
    return "\n".join(lines) + "\n"


def program_switches(settings: Settings) -> str:
    web = settings.role in ("all", "web")
    jobs = settings.role in ("all", "worker")
    return f"WEB_AUTOSTART={str(web).lower()} JOBS_AUTOSTART={str(jobs).lower()}"


def write_nginx_settings(settings: Settings, directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    for name, text in (("main.conf", nginx_main_settings(settings)),
                       ("http.conf", nginx_http_settings(settings))):
        with open(os.path.join(directory, name), "w") as f:
            f.write(text)


def main(argv: list[str]) -> int:
    try:
        settings = Settings.from_env()
    except ConfigError as error:
        for line in str(error).splitlines():
            print(f"configuration error: {line}", file=sys.stderr)
        return 2
    write_nginx_settings(settings, argv[1] if len(argv) > 1 else os.path.join(RUN_DIR, "nginx"))
    print(program_switches(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
