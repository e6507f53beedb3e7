from deploy import task


@task(every=0)
def poll() -> None:
    pass
