import time

from deploy import task


@task(every=2)
def five_seconds_every_2s() -> float:
    """Runs longer than its interval: without overlap, the ticks while it runs are skipped."""
    time.sleep(5)
    return time.time()
