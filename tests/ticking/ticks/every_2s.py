import time

from deploy import task


@task(every=2)
def every_2s() -> float:
    return time.time()
