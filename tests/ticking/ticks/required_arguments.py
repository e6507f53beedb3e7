from deploy import task


@task(cron="0 3 * * *")
def report(day: str) -> None:
    pass
