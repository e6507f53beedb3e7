# nginx -> gunicorn (gevent) -> Flask, under supervisord, in one container.
# Built with the classic builder: no BuildKit-only syntax.

# Stage 1: the Python packages, in a virtualenv that the final image copies without pip.
FROM debian:bookworm-slim AS packages

# pip reads these from the environment: point the build at a company mirror or a wheelhouse
# (docker build --build-arg PIP_INDEX_URL=https://mirror.example/simple ...).
ARG PIP_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX

RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends binutils python3-venv; \
    rm -rf /var/lib/apt/lists/*

COPY requirements.txt /tmp/
# What only building needs stays here: pip, setuptools, the packages' own test suites and
# the extensions' debugging symbols (23 MB less in the image, whose budget is 150 MB).
RUN set -eux; \
    python3 -m venv /opt/venv; \
    /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check -r /tmp/requirements.txt; \
    /opt/venv/bin/pip uninstall -y --disable-pip-version-check setuptools pip; \
    find /opt/venv -depth -type d -name tests -exec rm -rf {} +; \
    find /opt/venv -name '*.so' -exec strip --strip-unneeded {} +

# Stage 2: the image.
FROM debian:bookworm-slim

RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends \
        nginx \
        python3 \
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

COPY --from=packages /opt/venv /opt/venv
RUN set -eux; \
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
# Through nginx, so it proves the whole chain. Every 2 s, so that a fresh container is healthy
# about 2 s after `docker run` (Docker 20.10 has no --start-interval); a check costs ~0.065 s of CPU.
HEALTHCHECK --interval=2s --timeout=2s --start-period=30s --retries=3 \
    CMD ["python3", "-m", "deploy.healthcheck"]
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["supervisord", "-c", "/srv/supervisord.conf"]
