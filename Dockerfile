# nginx -> gunicorn (gevent) -> Flask, under supervisord, in one container.
# Built with the classic builder: no BuildKit-only syntax.

# Stage 1: the Python packages, in a virtualenv that the final image copies with pip (for the
# packages of a derived image) but without setuptools.
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

ENV STACK_REDIS_CLIENT=/opt/redis-client
COPY requirements.txt /tmp/
# What only building needs stays here: setuptools, the packages' own test suites and the
# extensions' debugging symbols (the image is kept small: README). pip goes into the image: a
# derived image installs its own packages with it (`RUN pip install -r requirements.txt`).
# redis-py (with async-timeout) goes to a folder of its own, on the path only when REDIS_URL
# is set (deploy/configure.py): huey imports it whenever it can, megabytes in every process
# that imports huey (bench/README.md, "Memory"), though the default queue (SQLite) never uses it.
RUN set -eux; \
    python3 -m venv /opt/venv; \
    grep -E '^(redis|async-timeout)==' /tmp/requirements.txt > /tmp/redis-client.txt; \
    grep -vE '^(redis|async-timeout)==' /tmp/requirements.txt > /tmp/venv.txt; \
    /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check -r /tmp/venv.txt; \
    /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps \
        --target "$STACK_REDIS_CLIENT" -r /tmp/redis-client.txt; \
    /opt/venv/bin/pip uninstall -y --disable-pip-version-check setuptools; \
    # pip runs only in a derived image's build: from its sources, without their compiled copies.
    find /opt/venv/lib/python3*/site-packages/pip -depth -type d -name __pycache__ -exec rm -rf {} +; \
    # deploy/supervisorctl takes its place: it knows the control socket's password.
    rm /opt/venv/bin/supervisorctl; \
    find /opt/venv "$STACK_REDIS_CLIENT" -depth -type d -name tests -exec rm -rf {} +; \
    find /opt/venv -name '*.so' -exec strip --strip-unneeded {} +

# Stage 2: the image.
FROM debian:bookworm-slim

# The container's folders, named here only: the stack's scripts, supervisord.conf and
# deploy/settings.py read these variables.
ENV STACK_LOG_DIR=/var/log/app \
    STACK_RUN_DIR=/run/flask-stack \
    STACK_DATA_DIR=/var/lib/app \
    STACK_REDIS_CLIENT=/opt/redis-client

RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends \
        nginx \
        python3 \
        tzdata \
    ; \
    apt-get clean; \
    # Not for a server (the image is kept small: bench/README.md): help()'s topics, debconf's old copies.
    rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled /usr/share/doc/* /usr/share/man/* \
        /usr/lib/python3.11/pydoc_data /var/cache/debconf/*-old; \
    useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin app; \
    install -d -m 1777 "$STACK_RUN_DIR"; \
    install -d -o app -g app "$STACK_LOG_DIR"; \
    install -d -o app -g app -m 1777 "$STACK_DATA_DIR"; \
    # The places an app extends the stack: prestart hooks, nginx locations (README).
    install -d /docker-entrypoint.d /etc/nginx/server.d; \
    # Flask's instance folder of a package in /srv is /srv/instance: on the data volume.
    install -d /srv; \
    ln -s "$STACK_DATA_DIR/instance" /srv/instance; \
    for command in docker-entrypoint.sh drain reload rotate-logs run-as-stack supervisorctl; do \
        ln -s "/srv/deploy/$command" "/usr/local/bin/$command"; \
    done; \
    ln -s /srv/deploy/healthcheck.py /usr/local/bin/healthcheck

# MALLOC_ARENA_MAX: glibc makes a memory arena per thread that allocates; two are enough for
# processes whose threads mostly wait (the consumer, the metrics' server) and cost less memory.
# pip (the virtualenv's, first on the PATH) installs into the stack's virtualenv as root, in a
# derived image's build, where no newer pip is to be looked for. onnxruntime, when imported,
# starts a telemetry thread unless ORT_DISABLE_TELEMETRY is set: imported in a preloading master
# (PRELOAD_APP), its forked workers abort or hang when they exit (README: Serving a model).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/srv \
    PYTHONUNBUFFERED=1 \
    MALLOC_ARENA_MAX=2 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    ORT_DISABLE_TELEMETRY=1

# A derived image's `RUN pip install` reads the same mirror arguments as this build
# (`docker build --build-arg PIP_INDEX_URL=...`) with no ARG lines of its own: these run in its
# build, right after its FROM (one generation: an image built FROM that one declares them again).
ONBUILD ARG PIP_INDEX_URL
ONBUILD ARG PIP_FIND_LINKS
ONBUILD ARG PIP_NO_INDEX

COPY --from=packages /opt/venv /opt/venv
COPY --from=packages $STACK_REDIS_CLIENT $STACK_REDIS_CLIENT
RUN set -eux; \
    supervisord --version; \
    gunicorn --version; \
    pip --version; \
    nginx -v

# The stack (deploy/, its three config files) and the app's packages: everything the
# .dockerignore leaves in, so a package of yours beside app/ is copied with no change here.
COPY . /srv/
RUN python3 -m compileall -q /srv

WORKDIR /srv
EXPOSE 80
# Liveness through nginx (GET /healthz), so it proves the whole chain; a worker-only
# container asks supervisord. Every 2 s, so that a fresh container is healthy about 2 s
# after `docker run` (Docker 20.10 has no --start-interval). The check (deploy/healthcheck.py)
# runs as the stack's user (Docker runs it as root), kept light: what it and Docker's exec
# cost is measured in bench/README.md ("Docker's health check").
HEALTHCHECK --interval=2s --timeout=2s --start-period=30s --retries=3 \
    CMD ["healthcheck"]
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["supervisord", "-c", "/srv/supervisord.conf"]
