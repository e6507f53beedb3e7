"""gunicorn's logger (`logger_class`), with its access lines as records with fields, which
the handlers of `gunicorn.access` (deploy/logs.py) format in text or JSON like every other
log. A module of its own, so that the job consumer, which uses deploy/logs.py, does not
import gunicorn."""

from gunicorn.glogging import Logger as GunicornLogger


class AccessLog(GunicornLogger):

    def access(self, resp, req, environ, request_time):
        if not self.access_log_enabled:
            return
        status = resp.status.split(None, 1)[0] if isinstance(resp.status, str) else resp.status
        headers = {name: value for name, value in req.headers} if hasattr(req, "headers") else {}
        duration = request_time.total_seconds()
        method, path, query = environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"), environ.get("QUERY_STRING")
        self.access_log.info("%s %s %s", method, path, status, extra={
            "method": method, "path": path, "query": query, "status": int(status),
            "bytes": getattr(resp, "sent", None) or 0, "duration": round(duration, 6),
            "duration_ms": int(duration * 1000),
            # The client as the app sees it: nginx's X-Real-IP, the address ProxyFix also derives.
            "client": headers.get("X-REAL-IP", "-"), "forwarded_for": headers.get("X-FORWARDED-FOR", ""),
            "request_id": headers.get("X-REQUEST-ID", "-"), "user_agent": headers.get("USER-AGENT", ""),
            "request_line": f"{method} {environ.get('RAW_URI')} {environ.get('SERVER_PROTOCOL')}",
        })
