# shellcheck shell=sh
# Sourced by the commands run with `docker exec` (as root unless -u is given): run as the
# user the stack runs as instead, the owner of supervisord's control socket, so that no
# file is left behind that the stack cannot write.
# become_stack_user "$0" "$@": re-executes the calling script as that user, if root.
become_stack_user() {
    [ "$(id -u)" = 0 ] || return 0
    socket=$STACK_RUN_DIR/supervisor.sock
    if [ ! -S "$socket" ]; then
        echo "$(basename "$1"): the stack is not running in this container (no $socket)" >&2
        exit 1
    fi
    owner=$(stat -c '%u %g' "$socket")
    exec setpriv --reuid="${owner% *}" --regid="${owner#* }" --clear-groups -- "$@"
}
