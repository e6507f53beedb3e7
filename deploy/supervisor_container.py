"""supervisord behaviour that a container needs and supervisord lacks.

supervisord runs the factory of every `[rpcinterface:x]` section inside its own process at
start, after it has made its process groups. This one keeps the listening socket of each
`[fcgi-program:x]` open for as long as supervisord runs: supervisord would close it whenever
the program is not running, and the connections waiting in its backlog with it, so a
restart would refuse connections instead of delaying them. And it subscribes to two
process events:

- A program exits: whatever is left of its process group is killed. When an nginx master
  dies its workers live on holding port 80, and the master supervisord starts next cannot
  bind it. (`killasgroup` covers only stops that supervisord makes.)
- A program goes FATAL (it failed `startretries` times within `startsecs`): supervisord
  stops everything and exits with status 1. Left alone it would keep running, a container
  that looks alive but serves nothing, and it always exits with status 0, so a restart
  policy of `on-failure` would never fire.
"""

import atexit
import os
import signal
import sys

from supervisor import events
from supervisor.process import FastCGIProcessGroup
from supervisor.states import SupervisorStates

FATAL_EXIT_STATUS = 1


class ContainerBehaviour:
    """Exposes no RPC methods; exists for its event subscriptions."""

    def __init__(self, supervisord):
        self.supervisord = supervisord
        self.fatal = []
        self.held_sockets = [group.socket_manager.get_socket()
                             for group in supervisord.process_groups.values()
                             if isinstance(group, FastCGIProcessGroup)]
        events.subscribe(events.ProcessStateExitedEvent, self.kill_leftovers)
        events.subscribe(events.ProcessStateBackoffEvent, self.kill_leftovers)  # exited while starting
        events.subscribe(events.ProcessStateFatalEvent, self.exit_on_fatal)

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


def make_rpcinterface(supervisord, **config):
    return ContainerBehaviour(supervisord)
