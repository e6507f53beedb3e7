#!/bin/sh
# Prepare the container, then exec the command (supervisord by default). Any other command,
# e.g. `docker run -it flask-stack sh`, runs as given.
#
# For supervisord: as root, pick the user everything runs as and give it the log and data
# folders; as that user, validate the configuration (a bad variable stops the container
# here, naming it), write nginx's settings, check the folders, run the prestart hooks in
# /docker-entrypoint.d/, and exec supervisord.
set -eu

HOOKS_DIR=/docker-entrypoint.d
IMAGE_USER=app

say() { echo "docker-entrypoint: $*" >&2; }

if [ "${1:-}" = supervisord ]; then
    if [ "$(id -u)" = 0 ]; then
        # Run everything as the owner of the mounted log folder, so that the host user owns
        # every file written there. A root-owned folder (Docker made it, or a named volume)
        # is given to the image's unprivileged user instead: nothing here runs as root.
        owner=$(stat -c %u:%g "$STACK_LOG_DIR")
        case "$owner" in
            0:*)
                chown "$IMAGE_USER:$IMAGE_USER" "$STACK_LOG_DIR"
                owner="$(id -u "$IMAGE_USER"):$(id -g "$IMAGE_USER")"
                ;;
        esac
        # The data folder follows, unless its owner was chosen (a mounted host folder).
        case "$(stat -c %u "$STACK_DATA_DIR")" in
            0|"$(id -u "$IMAGE_USER")") chown "$owner" "$STACK_DATA_DIR" ;;
        esac
        # The user must be able to reopen the container's stdout and stderr by name.
        chown "$owner" /proc/self/fd/1 /proc/self/fd/2 2>/dev/null || true
        exec setpriv --reuid="${owner%:*}" --regid="${owner#*:}" --clear-groups -- "$0" "$@"
    fi

    # Every variable is checked before anything starts; a bad one stops the container here,
    # and so does a log or data folder this user cannot write. It makes the log folders and
    # writes nginx's settings; what it prints sets the programs' switches (ROLE, LOG_TARGET)
    # and exports the secrets given as files.
    environment=$(python3 -m deploy.configure) || exit $?
    eval "$environment"

    if [ "$LOG_FILES" = true ] && ! grep -q " $STACK_LOG_DIR " /proc/self/mountinfo; then
        say "warning: no volume is mounted at $STACK_LOG_DIR; the logs stay inside the container" \
            "(docker run -v \"\$PWD/logs:$STACK_LOG_DIR\" ..., or LOG_TARGET=stdout for \`docker logs\`)"
    fi

    # Prestart hooks: every executable file of the folder, in name order, as this user. The
    # loop runs in a pipeline's subshell: its failure is the pipeline's, and `set -e` stops here.
    find "$HOOKS_DIR" -mindepth 1 -maxdepth 1 ! -type d 2>/dev/null | sort | while IFS= read -r hook; do
        if [ ! -x "$hook" ]; then
            say "skipping $hook: not executable (chmod +x it to run it)"
            continue
        fi
        say "running $hook"
        status=0
        "$hook" </dev/null || status=$?
        if [ "$status" -ne 0 ]; then
            say "error: $hook failed with exit status $status; the container stops"
            exit 1
        fi
    done
fi

exec "$@"
