"""The example's slow work: stand-ins for a model call or a batch job that waits on I/O.

Under gunicorn's gevent worker `time.sleep` yields to the event loop, so one worker serves
other requests while these wait.
"""

import time


def job1(seconds: float) -> dict:
    time.sleep(seconds)
    return {"task": "job1", "seconds": seconds}


def job2(arg1: str, arg2: str, seconds: float) -> dict:
    time.sleep(seconds)
    return {"task": "job2", "arg1": arg1, "arg2": arg2, "seconds": seconds}
