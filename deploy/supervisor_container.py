"""supervisord behaviour that a container needs and supervisord lacks.

supervisord runs the factory of every `[rpcinterface:x]` section inside its own process at
start, after it has made its process groups (this one is listed first, so it runs first).
It keeps the listening socket of each `[fcgi-program:x]` open for as long as supervisord
runs: supervisord would close it whenever the program is not running, and the connections
waiting in its backlog with it, so a restart would refuse connections instead of delaying
them. And it subscribes to process events:

- A program exits: whatever is left of its process group is killed. When an nginx master
  dies its workers live on holding port 80, and the master supervisord starts next cannot
  bind it. (`killasgroup` covers only stops that supervisord makes.)
- A program goes FATAL (it failed `startretries` times within `startsecs`): supervisord
  stops everything and exits with status 1. Left alone it would keep running, a container
  that looks alive but serves nothing, and it always exits with status 0, so a restart
  policy of `on-failure` would never fire.
- A program writes to its stdout or stderr: the output is forwarded to the container's,
  line by line, each line whole and marked with the log it belongs to (nginx's access and
  error logs, or the program's name) unless it marks itself (a JSON object, or a text line
  that begins with its source). supervisord is the only writer of the container's stdout
  and stderr, so lines of several programs are never mixed. Its own lines are marked
  `supervisord` when LOG_TARGET sends the logs to stdout.
- supervisord stops: the held sockets are closed while its log is still open, so a stop
  leaves no traceback behind.
"""

import atexit
import os
import signal
import sys

from supervisor import events, loggers
from supervisor.process import FastCGIProcessGroup
from supervisor.states import SupervisorStates

from deploy.settings import LOGS, Settings

FATAL_EXIT_STATUS = 1
# A program's stream -> the log its lines belong to; other programs' lines get the program's name.
LOG_OF_STREAM = {("nginx", log.stream): log.source.encode() for log in LOGS if log.program == "nginx"}
# Lines that name their log already: the Python programs' (deploy/logs.py) in text on a stream.
SELF_MARKED = (b"{", *(f"{log.source} ".encode() for log in LOGS if log.program != "nginx"))
LONGEST_LINE = 1 << 20  # a line without its end past this is forwarded as it is


class ContainerBehaviour:
    """Exposes no RPC methods; exists for its event subscriptions."""

    def __init__(self, supervisord):
        self.supervisord = supervisord
        self.fatal = []
        self.held_sockets = [group.socket_manager.get_socket()
                             for group in supervisord.process_groups.values()
                             if isinstance(group, FastCGIProcessGroup)]
        self.partial_lines = {}  # (pid, channel) -> the start of a line not yet ended
        self.log_own_lines_to_stdout()
        events.subscribe(events.ProcessStateExitedEvent, self.kill_leftovers)
        events.subscribe(events.ProcessStateBackoffEvent, self.kill_leftovers)  # exited while starting
        events.subscribe(events.ProcessStateFatalEvent, self.exit_on_fatal)
        events.subscribe(events.ProcessLogEvent, self.forward_output)
        events.subscribe(events.ProcessStateExitedEvent, self.flush_output)
        events.subscribe(events.ProcessStateBackoffEvent, self.flush_output)
        events.subscribe(events.SupervisorStoppingEvent, self.release_sockets)

    def log_own_lines_to_stdout(self):
        # supervisord.conf sets `silent`: this is its only stdout handler.
        marked = Settings.from_env().logs_to_streams
        loggers.handle_stdout(self.supervisord.options.logger,
                              ("supervisord " if marked else "") + "%(asctime)s %(levelname)s %(message)s\n")

    def kill_leftovers(self, event):
        # supervisord starts each program as the leader of its own process group, whose id is
        # the program's pid (still set while the event is sent). The kernel does not reuse it
        # while the group has members.
        group = event.process.pid
        if group <= 0:
            return  # it never started
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            return
        self.supervisord.options.logger.warn(
            f"killed what was left of {event.process.config.name}'s process group {group}")

    def exit_on_fatal(self, event):
        name = event.process.config.name
        message = (f"{name} entered FATAL (it could not be kept running): "
                   f"stopping all programs, exit status {FATAL_EXIT_STATUS}")
        self.supervisord.options.logger.critical(message)
        print(f"supervisord: {message}", file=sys.stderr, flush=True)
        if not self.fatal:
            # Runs after supervisord's main() has returned and closed its logs: the only
            # place left to choose the exit status.
            atexit.register(os._exit, FATAL_EXIT_STATUS)
        self.fatal.append(name)
        self.supervisord.options.mood = SupervisorStates.SHUTDOWN

    def forward_output(self, event):
        key = (event.pid, event.channel)
        data = self.partial_lines.pop(key, b"") + event.data
        *lines, rest = data.split(b"\n")
        if len(rest) > LONGEST_LINE:
            lines.append(rest)
        elif rest:
            self.partial_lines[key] = rest
        if lines:
            log = LOG_OF_STREAM.get((event.process.config.name, event.channel),
                                    event.process.config.name.encode())
            self.write(event.channel, b"".join(
                (line if line.startswith(SELF_MARKED) else log + b" " + line) + b"\n" for line in lines))

    def flush_output(self, event):
        for channel in ("stdout", "stderr"):
            rest = self.partial_lines.pop((event.process.pid, channel), b"")
            if rest:
                self.write(channel, event.process.config.name.encode() + b" " + rest + b"\n")

    @staticmethod
    def write(channel: str, data: bytes) -> None:
        fd = 1 if channel == "stdout" else 2
        while data:
            data = data[os.write(fd, data):]

    def release_sockets(self, event):
        self.held_sockets.clear()  # the socket managers close them now, and log it while they can


def make_rpcinterface(supervisord, **config):
    return ContainerBehaviour(supervisord)
