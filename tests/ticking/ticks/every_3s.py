import socket

from deploy import task


@task(every=3)
def every_3s() -> str:
    return socket.gethostname()
