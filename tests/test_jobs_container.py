"""The jobs API through nginx in the real container: its token, a running job canceled,
a thousand waits that cost the workers no thread, and the dashboard as a person sees it in a
real browser (Debian's chromium, headless, driven by Selenium)."""

import asyncio
import base64
import json
import re
import time

import pytest

from tests.containers import TERMINAL, JobsClient, http_request, wait_until
from tests.support import require_tool

TOKEN = "dashboard-token-" + "0123456789abcdef"


def test_the_token_guards_the_api_and_a_running_job_is_canceled_through_nginx(containers):
    container = containers.start(env={"JOBS_TOKEN": TOKEN})
    assert "JOBS_TOKEN is not set" not in container.logs()
    refused = JobsClient.over_http(container.port).raw("POST", "/jobs", {"task": "job1"})
    assert refused == (401, {"error": "Unauthorized",
                             "message": "this needs the jobs token (JOBS_TOKEN): Authorization: Bearer <token>"})
    jobs = JobsClient.over_http(container.port, token=TOKEN)
    job = jobs.submit("job1", seconds=30)
    jobs.wait_for_status(job["id"], {"running"}, container=container)
    status, asked = jobs.request("DELETE", f"/jobs/{job['id']}", None)
    assert (status, asked["status"]) == (202, "running")
    record = jobs.wait_for_status(job["id"], TERMINAL, deadline=5, container=container)
    assert (record["status"], record["error"]) == ("canceled", "canceled while it ran")
    assert record["progress"]["message"].endswith("s left")  # job1 reports, and stops at its next report


def worker_threads(container) -> dict[int, int]:
    """The OS threads of each gunicorn worker: pid -> count."""
    master = container.main_process_pid("/run/flask-stack/gunicorn.pid")
    pids = container.exec("sh", "-c", f"cat /proc/{master}/task/*/children").stdout.split()
    return {int(pid): int(re.search(r"^Threads:\s+(\d+)", container.exec("cat", f"/proc/{pid}/status").stdout,
                                    re.M)[1]) for pid in pids}


async def wait_for(port: int, job_id: str, count: int) -> list[str]:
    """`count` requests of GET /jobs/<id>?wait=60 at once, each on its own connection; their status lines."""
    async def one() -> str:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /jobs/{job_id}?wait=60 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        answer = await reader.read()
        writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0].decode()
        return f"{status_line} {json.loads(body)['status']}"
    return await asyncio.gather(*(one() for _ in range(count)))


def test_a_thousand_waits_cost_the_workers_no_thread_each(containers):
    # One client address opens them all: the per-client limit is lifted, as for a trusted balancer.
    container = containers.start(env={"WEB_CONCURRENCY": "2", "CLIENT_MAX_CONNECTIONS": "0"})
    jobs = JobsClient.over_http(container.port)
    threads_before = worker_threads(container)
    job = jobs.submit("job1", seconds=8)
    loop = asyncio.new_event_loop()
    try:
        waiting = loop.create_task(wait_for(container.port, job["id"], 1000))
        loop.run_until_complete(asyncio.sleep(4))  # all of them wait now, the job runs
        threads_during = worker_threads(container)
        answers = loop.run_until_complete(asyncio.wait_for(waiting, 60))
    finally:
        loop.close()
    print(f"\n1000 waits: worker threads {threads_before} before, {threads_during} while they waited")
    assert answers.count("HTTP/1.1 200 OK done") == 1000, set(answers)
    assert jobs.record(job["id"])["status"] == "done"
    assert max(threads_during.values()) <= max(threads_before.values()) + 2


@pytest.fixture
def browser(tmp_path):
    """Debian's chromium, headless, through Debian's chromium-driver; closed after the test."""
    from selenium import webdriver  # noqa: PLC0415  (the browser tests only)
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415

    options = webdriver.ChromeOptions()
    options.binary_location = require_tool("chromium", "chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,1000", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(require_tool("chromedriver", "chromium-driver")))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def visible_text(browser) -> str:
    from selenium.webdriver.common.by import By  # noqa: PLC0415
    return browser.find_element(By.TAG_NAME, "body").text


def test_the_dashboard_shows_a_person_the_jobs_and_the_schedules(containers, browser, tmp_path):
    from selenium.webdriver.common.by import By  # noqa: PLC0415
    from selenium.webdriver.support.ui import Select  # noqa: PLC0415

    container = containers.start(env={"JOBS_TOKEN": TOKEN, "JOB_WORKERS": "2"})
    jobs = JobsClient.over_http(container.port, token=TOKEN)
    done = jobs.submit("job2", arg1="hello", arg2="dashboard", seconds=0.5)
    canceled = jobs.submit("job1", seconds=30)
    running = jobs.submit("job1", seconds=30)
    jobs.wait_for_status(done["id"], {"done"}, container=container)
    jobs.wait_for_status(running["id"], {"running"}, container=container)
    jobs.request("DELETE", f"/jobs/{canceled['id']}", None)
    jobs.wait_for_status(canceled["id"], {"canceled"}, container=container)
    base = f"http://127.0.0.1:{container.port}/jobs/dashboard"

    refused = http_request(container.port, "/jobs/dashboard")  # no token: a browser asks for one
    assert (refused.status, refused.headers["WWW-Authenticate"]) == (401, "Basic realm=jobs")

    basic = base64.b64encode(f"anyone:{TOKEN}".encode()).decode()
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {basic}"}})
    browser.get(base)
    wait_until(lambda: "Recent jobs" in visible_text(browser), 10, "the dashboard's page")
    counts = {item.text.split("\n")[1]: int(item.text.split("\n")[0])
              for item in browser.find_elements(By.CSS_SELECTOR, ".counts li")}
    assert counts["done"] >= 1 and counts["canceled"] >= 1 and counts["running"] >= 1, counts
    rows = [row.text for row in browser.find_elements(By.CSS_SELECTOR, "#jobs tbody tr")]
    assert any(row.startswith(done["id"][:8]) and " job2 done " in f" {row} " for row in rows), rows
    running_row = next(row for row in rows if row.startswith(running["id"][:8]))
    assert re.search(r"running \d+% \d+\.\d s left", running_row), running_row  # its progress
    schedules = browser.find_element(By.ID, "schedules").text
    assert "nightly_report" in schedules and "cron 0 3 * * * (UTC)" in schedules
    assert browser.find_element(By.CSS_SELECTOR, 'meta[http-equiv="refresh"]').get_attribute("content") == "5"
    browser.save_screenshot(str(tmp_path / "dashboard.png"))

    Select(browser.find_element(By.NAME, "status")).select_by_visible_text("canceled")
    browser.find_element(By.CSS_SELECTOR, "form button").click()
    wait_until(lambda: "status=canceled" in browser.current_url, 10, "the filter applied")
    filtered = [row.text for row in browser.find_elements(By.CSS_SELECTOR, "#jobs tbody tr")]
    assert filtered and all(" canceled " in f" {row} " for row in filtered), filtered

    browser.get(base)
    browser.find_element(By.LINK_TEXT, done["id"][:8]).click()
    wait_until(lambda: done["id"] in browser.title, 10, "the job's page")
    page = visible_text(browser)
    for expected in ("Task job2", "Status done", "Progress 100% waited 0.5 s", "Attempt 1", '"arg1": "hello"',
                     '"arg2": "dashboard"', "Result", f"Request id {done['request_id']}"):
        assert expected in page, (expected, page)
    browser.get(f"{base}/{canceled['id']}")
    assert "Error\ncanceled while it ran" in visible_text(browser)
    time.sleep(0)  # the page is read-only: nothing on it changes a job
    assert not browser.find_elements(By.CSS_SELECTOR, "form[method=post], button[formmethod=post]")
