"""gunicorn's logger without the access line, for bench/costs.py only: the stack's logger
(deploy/access_log.py) with `access` doing nothing, so that the access line's cost can be
measured by taking it away."""

from deploy.access_log import AccessLog


class NoAccessLog(AccessLog):

    def access(self, resp, req, environ, request_time):
        return
