from deploy import task


@task(cron="61 * * * *")
def cleanup() -> None:
    pass
