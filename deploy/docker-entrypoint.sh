#!/bin/sh
# Prepare the container, then exec the command (supervisord by default). Any other command,
# e.g. `docker run -it flask-stack sh`, runs as given.
set -eu

LOG_DIR=/var/log/app
DATA_DIR=/var/lib/app
IMAGE_USER=app

say() { echo "docker-entrypoint: $*" >&2; }

if [ "${1:-}" = supervisord ]; then
    if [ "$(id -u)" = 0 ]; then
        # Run everything as the owner of the mounted log folder, so that the host user owns
        # every file written there. A root-owned folder (Docker made it, or a named volume)
        # is given to the image's unprivileged user instead: nothing here runs as root.
        owner=$(stat -c %u:%g "$LOG_DIR")
        case "$owner" in
            0:*)
                chown "$IMAGE_USER:$IMAGE_USER" "$LOG_DIR"
                owner="$(id -u "$IMAGE_USER"):$(id -g "$IMAGE_USER")"
                ;;
        esac
        # The job queue's folder follows, unless its owner was chosen (a mounted host folder).
        case "$(stat -c %u "$DATA_DIR")" in
            0|"$(id -u "$IMAGE_USER")") chown "$owner" "$DATA_DIR" ;;
        esac
        # The user must be able to reopen the container's stdout and stderr by name.
        chown "$owner" /proc/self/fd/1 /proc/self/fd/2 2>/dev/null || true
        exec setpriv --reuid="${owner%:*}" --regid="${owner#*:}" --clear-groups -- "$0" "$@"
    fi

    # Every variable is checked before anything starts; a bad one stops the container here.
    # What it prints says which programs supervisord starts (ROLE).
    switches=$(python3 -m deploy.configure)
    export $switches

    if ! grep -q " $LOG_DIR " /proc/self/mountinfo; then
        say "warning: no volume is mounted at $LOG_DIR; the logs stay inside the container" \
            "(docker run -v \"\$PWD/logs:$LOG_DIR\" ...)"
    fi
    mkdir -p "$LOG_DIR/nginx" "$LOG_DIR/gunicorn" "$LOG_DIR/app" "$LOG_DIR/jobs" 2>/dev/null || true
    unwritable=$(find "$LOG_DIR" "$DATA_DIR" -maxdepth 2 ! -writable -print -quit)
    if [ -n "$unwritable" ]; then
        say "error: $unwritable is not writable by uid $(id -u) gid $(id -g)." \
            "Make the mounted folder writable by that user (chown), or run without --user."
        exit 1
    fi
fi

exec "$@"
