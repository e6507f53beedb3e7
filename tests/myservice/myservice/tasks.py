"""myservice's durable job."""

from deploy import task


@task()
def make_report(title: str, pages: int = 1) -> dict:
    return {"report": title.upper(), "pages": pages}
