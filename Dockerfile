# nginx -> gunicorn (gevent) -> Flask, under supervisord, in one container.
# Built with the classic builder: no BuildKit-only syntax.
FROM debian:bookworm-slim

# pip reads these from the environment: point the build at a company mirror or a wheelhouse
# (docker build --build-arg PIP_INDEX_URL=https://mirror.example/simple ...).
ARG PIP_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX

RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends \
        nginx \
        python3 \
        python3-venv \
    ; \
    apt-get clean; \
    rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled /usr/share/doc/* /usr/share/man/*; \
    useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin app; \
    install -d -m 1777 /run/flask-stack; \
    install -d -o app -g app /var/log/app; \
    install -d -o app -g app -m 1777 /var/lib/app

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/srv \
    PYTHONUNBUFFERED=1

# Dependencies before the code, so that a code change does not reinstall them.
COPY requirements.txt /srv/
RUN set -eux; \
    python3 -m venv /opt/venv; \
    pip install --no-cache-dir --disable-pip-version-check -r /srv/requirements.txt; \
    pip uninstall -y --disable-pip-version-check setuptools; \
    supervisord --version; \
    gunicorn --version; \
    nginx -v

COPY deploy/docker-entrypoint.sh deploy/reload deploy/rotate-logs /usr/local/bin/
COPY gunicorn_config.py nginx.conf supervisord.conf /srv/
COPY deploy /srv/deploy
COPY app /srv/app
RUN python3 -m compileall -q /srv/app /srv/deploy /srv/gunicorn_config.py

WORKDIR /srv
EXPOSE 80
# Through nginx, so it proves the whole chain; every 5 s so a fresh container is marked healthy soon.
HEALTHCHECK --interval=5s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python3", "-m", "deploy.healthcheck"]
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["supervisord", "-c", "/srv/supervisord.conf"]
