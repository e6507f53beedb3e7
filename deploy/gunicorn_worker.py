"""gunicorn's gevent worker, fair to every connection and safe to recycle, for connections
that nginx keeps open to gunicorn (its upstream keepalive).

- Fair: when a greenlet has answered on a kept-alive connection, nginx has often sent the
  next request already, so gevent's `recv` returns without yielding and that one greenlet
  serves its connection again and again while the others wait (seconds at p99). This worker
  yields after each answer, so every connection takes its turn.
- It accepts up to ACCEPT_PER_TURN new connections per turn of the event loop. gunicorn
  takes one when there are several workers (to spread them); with kept-alive connections few
  are new, and one a turn lets a burst of them wait in the backlog.
- Safe to recycle: when it is to stop (MAX_REQUESTS, `reload app`, a stop), it closes its
  listening socket at once, instead of within a second, so no connection is accepted that it
  would then drop; the other workers take the new ones. Its kept-alive connections get
  `Connection: close` on their next answer (gunicorn's own rule) and nginx closes the idle
  ones first (its keepalive_timeout is below gunicorn's `keepalive`), so none is cut while
  nginx sends on it.
- Replaced ahead of its exit: when it has served MAX_REQUESTS, it asks the master for one more
  worker (SIGTTIN, gunicorn's signal for that) before it finishes its requests, so its
  replacement boots meanwhile instead of after its exit; the master goes back to
  WEB_CONCURRENCY workers when it exits (gunicorn_config.py's child_exit).
"""

import os
import signal
import time
from contextlib import suppress

import gevent
from gevent.event import Event
from gevent.pool import Pool
from gevent.server import StreamServer
from gunicorn.workers.ggevent import GeventWorker

ACCEPT_PER_TURN = 16


class ListenerName:
    """What gunicorn's request handling asks of the listening socket: its name."""

    def __init__(self, name):
        self.name = name

    def getsockname(self):
        return self.name


class FairGeventWorker(GeventWorker):

    @property
    def alive(self) -> bool:
        return self._alive

    @alive.setter
    def alive(self, value: bool) -> None:
        was_alive = getattr(self, "_alive", False)
        self._alive = value
        stopping = getattr(self, "_stopping", None)
        if not value and stopping is not None:
            stopping.set()  # the run loop closes the listeners now
            if was_alive and self.nr >= self.max_requests:
                with suppress(ProcessLookupError):  # a master that is gone needs no replacement
                    os.kill(self.ppid, signal.SIGTTIN)

    def run(self):
        """gunicorn 27.0.1's GeventWorker.run (gunicorn/workers/ggevent.py), changed where the
        module's docstring says: a server per listener, accepting up to ACCEPT_PER_TURN a turn,
        closed as soon as the worker is to stop; then its requests in flight get the graceful
        timeout. Compare it with gunicorn's own when gunicorn is upgraded."""
        self._stopping = Event()
        if not self.alive:
            self._stopping.set()
        servers = []
        for listener in self.sockets:
            listener.setblocking(1)
            # A connection accepted just before the listener is closed is still served: gunicorn
            # asks the listener only its name, known from the start.
            name = ListenerName(listener.getsockname())
            server = StreamServer(listener, handle=lambda client, addr, name=name: self.handle(name, client, addr),
                                  spawn=Pool(self.worker_connections))
            server.max_accept = ACCEPT_PER_TURN
            server.start()
            servers.append(server)

        while not self._stopping.wait(1.0):
            self.notify()
        for server in servers:
            server.close()  # no new connection: the other workers take them

        # The requests in flight finish within GRACEFUL_TIMEOUT.
        deadline = time.monotonic() + self.cfg.graceful_timeout
        while time.monotonic() < deadline:
            if all(server.pool.free_count() == server.pool.size for server in servers):
                return
            self.notify()
            gevent.sleep(0.1)
        self.log.warning("Worker graceful timeout (pid:%s)", self.pid)
        for server in servers:
            server.stop(timeout=1)

    def handle_request(self, listener_name, req, sock, addr):
        super().handle_request(listener_name, req, sock, addr)
        gevent.sleep(0)  # let the other connections take their turn before this one's next request
