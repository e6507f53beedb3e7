"""Docker Swarm: deploy/swarm/stack.yml on a single-node swarm, deployed with locally built
images (no registry). Under a bounded load through the edge (threads, 127.0.0.1 only, fast
and 1-second requests mixed) it rolls `web` to a new image, then to one that never becomes
healthy (rolled back), rolls `worker` with jobs queued and running, and kills a worker with a
running job. Each case prints its figures and adds a row to the reliability table
(tests/figures.py).

The swarm is the engine's own: made by the test (`docker swarm init`) and left after, or, if
the engine already manages a single-node swarm, used and left as it was. Everything the test
makes has a name of its own and is removed after: the stack, its secret, its volume, the
images it built."""

import ipaddress
import json
import os
import random
import subprocess
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
import yaml

from tests import figures
from tests.containers import TERMINAL, JobsClient, docker, free_port, http_request, wait_until
from tests.load import Clients, Load
from tests.support import REDIS_DOCKERFILE, ROOT, build_image

pytestmark = [pytest.mark.slow]

STACK_FILE = ROOT / "deploy" / "swarm" / "stack.yml"
HAPROXY_CFG = ROOT / "deploy" / "swarm" / "haproxy.cfg"
JOB_LEASE_SECONDS = 6  # low, so that a killed worker's job is ended within seconds
JOBS_TOKEN = "swarm-test-jobs-token-0123456789"
TICKING = ROOT / "tests" / "ticking"
TICK_MODULES, TICK_TASK, TICK_SECONDS = "app,ticks.every_3s", "every_3s", 3
LEASE_MARGIN = 10  # seconds on top of JOB_LEASE_SECONDS: swarm restarts the task, its consumer ends the job

# Stand-ins for the official images, which no registry here can give: Debian's packages, under
# names of their own, with the official images' interfaces (the config file's path and soft stop
# of haproxy:2.8; /data, its owner and `redis-server` of redis:7).
EDGE_DOCKERFILE = """FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends haproxy && rm -rf /var/lib/apt/lists/* \\
    && mkdir -p /usr/local/etc/haproxy
USER haproxy
STOPSIGNAL SIGUSR1
CMD ["haproxy", "-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
"""
# The image under test, as a new release and as one whose health check never passes.
NEW_VERSION = "2"
NEW_DOCKERFILE = "FROM {image}\nENV APP_VERSION=" + NEW_VERSION + "\n"
NEVER_HEALTHY = "never-healthy"
NEVER_HEALTHY_DOCKERFILE = ("FROM {image}\nENV APP_VERSION=" + NEVER_HEALTHY + "\n"
                            # Every option: a HEALTHCHECK inherits those it leaves out (start period 30 s).
                            'HEALTHCHECK --interval=1s --timeout=1s --start-period=1s --retries=2 CMD ["false"]\n')

# The load: FAST_CLIENTS send GET / (its answer names the version), at most one request every
# FAST_INTERVAL s each; SLOW_CLIENTS send GET /job1?seconds=1, so that requests are always in
# flight when a replica stops. Each request on a new connection; every load stops by itself.
FAST_CLIENTS, FAST_INTERVAL = 6, 0.1
SLOW_CLIENTS, SLOW_PATH = 4, "/job1?seconds=1"
LOAD_MAX_SECONDS, LOAD_MAX_REQUESTS = 240, 30_000


# --- the rule of the stop grace periods (no Docker needed) -----------------------------------

def seconds(value: str) -> int:
    assert value.endswith("s") and value[:-1].isdigit(), f"{value!r}: write it in whole seconds, e.g. 20s"
    return int(value[:-1])


def test_stop_grace_periods_cover_the_drain_and_the_graceful_stop():
    """The rule of docs/orchestrators.md: Docker's SIGKILL never cuts a drain or a graceful stop short. A web
    replica drains, then nginx and gunicorn stop one after the other, each within
    GRACEFUL_TIMEOUT; a worker's consumer gets GRACEFUL_TIMEOUT. Plus a margin of 5 s."""
    services = yaml.safe_load(STACK_FILE.read_text())["services"]
    for name, stops in (("web", 2), ("worker", 1)):
        environment = services[name]["environment"]
        needed = int(environment.get("DRAIN_SECONDS", 0)) + stops * int(environment["GRACEFUL_TIMEOUT"]) + 5
        assert seconds(services[name]["stop_grace_period"]) >= needed, name
    assert services["web"]["environment"]["DRAIN_SECONDS"] != "0"
    # The edge's soft stop ends (hard-stop-after) before Docker's SIGKILL.
    hard_stop = next(line.split()[1] for line in HAPROXY_CFG.read_text().splitlines()
                     if line.strip().startswith("hard-stop-after"))
    assert seconds(hard_stop) < seconds(services["edge"]["stop_grace_period"])


# --- load through the edge ---------------------------------------------------------------------

LOAD_GROUPS = [Clients("/", FAST_CLIENTS, FAST_INTERVAL), Clients(SLOW_PATH, SLOW_CLIENTS)]


def load(port: int) -> Load:
    """The load through the edge, while a block runs; the answers after it."""
    return Load(port, LOAD_GROUPS, LOAD_MAX_SECONDS, LOAD_MAX_REQUESTS)


def versions(result: Load) -> Counter:
    """The versions GET / answered with: which image served it."""
    return Counter(json.loads(answer.body)["version"] for answer in result.answers
                   if answer.path == "/" and answer.status == 200)


def summary(result: Load) -> str:
    return f"{len(result.answers)} requests ({dict(result.statuses())}), versions seen {dict(versions(result))}"


# --- the swarm and the stack -------------------------------------------------------------------

@dataclass
class Stack:
    name: str
    port: int
    edge_subnet: str
    images: dict[str, str]  # role: the image's tag

    def service(self, name: str) -> str:
        return f"{self.name}_{name}"

    def update(self, service: str, image: str) -> dict:
        """`docker service update --image`: a rolling update by the service's update_config.
        Returns the UpdateStatus from before, which wait_for_update then ignores."""
        before = self.update_status(service)
        docker("service", "update", "--detach", "--no-resolve-image", "--image", image, self.service(service))
        return before

    def update_status(self, service: str) -> dict:
        status = docker("service", "inspect", "--format", "{{json .UpdateStatus}}", self.service(service)).stdout
        return json.loads(status) or {}

    def wait_for_update(self, service: str, expected: str, before: dict, deadline: float) -> dict:
        """Until the service's UpdateStatus.State is `expected`; fails at once on another final
        state. `before`: the status of an earlier update, not this one's."""
        final = {"completed", "paused", "rollback_completed", "rollback_paused"}

        def state():
            status = self.update_status(service)
            if status == before:
                return False
            if status.get("State") in final - {expected}:
                raise AssertionError(f"{service}: update ended {status}, not {expected}")
            return status.get("State") == expected and status
        return wait_until(state, deadline, f"{service}: UpdateStatus {expected}", interval=0.5)

    def running_images(self, service: str) -> list[str]:
        tasks = docker("service", "ps", "--filter", "desired-state=running", "--format",
                       "{{.Image}} {{.CurrentState}}", self.service(service)).stdout.splitlines()
        return sorted(line.split()[0] for line in tasks if line.split()[1] == "Running")

    def containers(self, service: str) -> list[str]:
        """The running containers of the service."""
        label = f"label=com.docker.swarm.service.name={self.service(service)}"
        return docker("ps", "-q", "--filter", label).stdout.split()

    def services_ready(self) -> bool:
        """Every service runs all its replicas."""
        lines = docker("service", "ls", "--filter", f"label=com.docker.stack.namespace={self.name}",
                       "--format", "{{.Replicas}}").stdout.split()
        return len(lines) == 4 and all(running == wanted for running, wanted in (line.split("/") for line in lines))

    def diagnostics(self) -> str:
        """`docker service ps --no-trunc` and the last lines of every service's logs."""
        parts = []
        for service in ("edge", "web", "worker", "redis"):
            tasks = docker("service", "ps", "--no-trunc", self.service(service), check=False)
            try:
                logs = docker("service", "logs", "--raw", "--tail", "60", self.service(service), check=False,
                              timeout=60)
                logs_text = logs.stdout + logs.stderr
            except subprocess.TimeoutExpired:
                logs_text = "(docker service logs did not answer within 60 s)\n"
            parts.append(f"--- docker service ps --no-trunc {self.service(service)}\n{tasks.stdout}{tasks.stderr}"
                         f"--- docker service logs {self.service(service)} (last lines)\n{logs_text}")
        return "\n".join(parts)

    @contextmanager
    def diagnosed(self):
        """On a failure inside the block, print the services' tasks and logs with it."""
        try:
            yield
        except BaseException:
            print(self.diagnostics())
            raise


def build(tag: str, dockerfile: str) -> str:
    """`docker build` from a Dockerfile on stdin (no context); fails with its output."""
    result = docker("build", "--network=host", "-t", tag, "-", input_text=dockerfile, timeout=600, check=False)
    assert result.returncode == 0, f"docker build of {tag} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return tag


def free_subnet() -> str:
    """A /24 that no Docker network uses (the edge's network: web trusts it)."""
    used = []
    for network in docker("network", "ls", "-q").stdout.split():
        subnets = docker("network", "inspect", "--format", "{{range .IPAM.Config}}{{.Subnet}} {{end}}", network,
                         check=False).stdout.split()
        used += [ipaddress.ip_network(subnet) for subnet in subnets]
    for _ in range(100):
        candidate = ipaddress.ip_network(f"10.{random.randint(200, 250)}.{random.randint(0, 255)}.0/24")
        if not any(candidate.overlaps(subnet) for subnet in used):
            return str(candidate)
    raise AssertionError("no free /24 in 10.200.0.0-10.250.255.0")


@pytest.fixture(scope="module")
def swarm(image):
    """A single-node swarm on this engine: made here (and left after), or the engine's own."""
    state, manager = docker("info", "--format", "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}").stdout.split()
    if state == "active":
        if manager != "true":
            pytest.fail("this engine is a worker of a swarm: the test needs a manager")
        if len(docker("node", "ls", "-q").stdout.split()) > 1:
            pytest.skip("the engine manages a swarm of several nodes: the test's images exist on this one only")
        yield
        return
    assert state == "inactive", f"the engine's swarm is {state}"
    # `swarm init` also makes the bridge docker_gwbridge, which `swarm leave` keeps.
    had_gateway_bridge = docker("network", "inspect", "docker_gwbridge", check=False).returncode == 0
    docker("swarm", "init", "--advertise-addr", "127.0.0.1")
    try:
        yield
    finally:
        docker("swarm", "leave", "--force", check=False)
        if not had_gateway_bridge:
            docker("network", "rm", "docker_gwbridge", check=False)


@pytest.fixture(scope="module")
def stack(image, swarm):
    """The stack, deployed with the image under test, stand-ins for the edge and Redis, and a
    low JOB_LEASE_SECONDS; removed after with all it made."""
    suffix = uuid.uuid4().hex[:8]
    name = f"fstest{suffix}"
    images = {"app": f"flask-stack-swarm-test:app-{suffix}",  # the image under test, with ticks.every_3s
              "new": f"flask-stack-swarm-test:new-{suffix}", "never-healthy": f"flask-stack-swarm-test:bad-{suffix}",
              "edge": f"flask-stack-test-haproxy:{suffix}", "redis": f"flask-stack-test-swarm-redis:{suffix}"}
    secrets = {"REDIS_URL_SECRET": (f"{name}-redis-url", "redis://redis:6379/0"),
               "JOBS_TOKEN_SECRET": (f"{name}-jobs-token", JOBS_TOKEN)}
    stack = Stack(name, free_port(), free_subnet(), images)
    made_secrets = []
    try:
        # The image under test, with a task every 3 s (tests/ticking) that the two workers share.
        build_image(images["app"], TICKING, f"--build-arg=STACK_IMAGE={image}",
                    f"--build-arg=JOB_MODULES={TICK_MODULES}")
        with ThreadPoolExecutor(max_workers=4) as pool:
            builds = [pool.submit(build, images["edge"], EDGE_DOCKERFILE),
                      pool.submit(build, images["redis"], REDIS_DOCKERFILE),
                      pool.submit(build, images["new"], NEW_DOCKERFILE.format(image=images["app"])),
                      pool.submit(build, images["never-healthy"], NEVER_HEALTHY_DOCKERFILE.format(image=images["app"]))]
            for future in builds:
                future.result()
        check = docker("run", "--rm", "--network", "none", "-v", f"{HAPROXY_CFG}:/usr/local/etc/haproxy/haproxy.cfg:ro",
                       images["edge"], "haproxy", "-c", "-f", "/usr/local/etc/haproxy/haproxy.cfg", check=False)
        assert check.returncode == 0, f"haproxy -c of {HAPROXY_CFG}:\n{check.stdout}{check.stderr}"
        for secret, value in secrets.values():
            docker("secret", "create", secret, "-", input_text=value)
            made_secrets.append(secret)
        variables = {"IMAGE": images["app"], "EDGE_IMAGE": images["edge"], "REDIS_IMAGE": images["redis"],
                     "HTTP_PORT": str(stack.port), "EDGE_SUBNET": stack.edge_subnet,
                     **{variable: secret for variable, (secret, _) in secrets.items()},
                     "JOB_LEASE_SECONDS": str(JOB_LEASE_SECONDS)}
        deploy = ["stack", "deploy", "--resolve-image", "never", "-c", str(STACK_FILE), name]
        # `docker stack deploy` reads the stack file's variables from its environment.
        result = docker_with(variables, *deploy)
        assert result.returncode == 0, f"docker stack deploy failed:\n{result.stdout}{result.stderr}"
        with stack.diagnosed():
            wait_until(stack.services_ready, 120, "every service running all its replicas", interval=1)
            wait_until(lambda: both_replicas_answer(stack), 60, "both web replicas answering through the edge",
                       interval=0.5)
        yield stack
    finally:
        remove(stack, made_secrets)


def docker_with(variables: dict, *args: str):
    """`docker` with these environment variables (the stack file's), all given explicitly."""
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **variables})


def both_replicas_answer(stack: Stack) -> bool:
    """GET /ip through the edge names two replicas (their host_ip) within 20 requests."""
    hosts = set()
    for _ in range(20):
        response = http_request(stack.port, "/ip", timeout=5)
        if response.status != 200:
            return False
        hosts.add(response.json()["host_ip"])
    return len(hosts) == 2 and http_request(stack.port, "/readyz", timeout=5).status == 200


def remove(stack: Stack, secrets: list[str]) -> None:
    """The stack (services, networks, config), then its volume, the secrets and the images."""
    docker("stack", "rm", stack.name, check=False)
    label = f"label=com.docker.stack.namespace={stack.name}"
    try:
        wait_until(lambda: not docker("ps", "-aq", "--filter", label).stdout.split()
                   and not docker("network", "ls", "-q", "--filter", label).stdout.split(),
                   90, f"the containers and networks of stack {stack.name} removed", interval=1)
    finally:
        docker("volume", "rm", f"{stack.name}_redis-data", check=False)
        for secret in secrets:
            docker("secret", "rm", secret, check=False)
        docker("rmi", *stack.images.values(), check=False, timeout=120)


def swarm_figures(case: str, result: Load, held: str, recovery: float | None = None) -> None:
    print(f"\nswarm: {case}: {summary(result)}; failed {len(result.failures)}; {held}"
          + ("" if recovery is None else f"; {recovery:.1f} s"))
    figures.record(f"swarm: {case}", len(result.answers), len(result.failures), held, recovery)


def current_version(stack: Stack) -> str:
    return http_request(stack.port, "/", timeout=5).json()["version"]


# --- the cases -----------------------------------------------------------------------------------

def test_the_app_sees_the_client_through_the_edge(stack):
    """The edge is trusted (TRUSTED_PROXIES: its network), a client's own X-Forwarded-For is not."""
    with stack.diagnosed():
        response = http_request(stack.port, "/ip", headers={"X-Forwarded-For": "6.6.6.6",
                                                            "X-Request-ID": "chosen-by-the-client"})
        client = ipaddress.ip_address(response.json()["client_ip"])
        print(f"\nswarm: GET /ip through the edge: {response.json()}, X-Request-ID {response.headers['X-Request-ID']}")
        assert str(client) != "6.6.6.6"
        assert client not in ipaddress.ip_network(stack.edge_subnet), "the app sees the edge, not the client"
        # The edge's request id (a UUID) reached nginx, which kept it: the edge is trusted.
        assert uuid.UUID(response.headers["X-Request-ID"])


def test_two_worker_replicas_run_each_tick_of_a_scheduled_task_once(stack):
    """Both replicas' consumers claim the ticks of a task every 3 s in the one Redis: each tick
    runs once, none is missed."""
    jobs = JobsClient.over_http(stack.port, token=JOBS_TOKEN)
    with stack.diagnosed():
        assert len(stack.containers("worker")) == 2
        time.sleep(6 * TICK_SECONDS)
        status, page = jobs.request("GET", f"/jobs?task={TICK_TASK}&limit=500", None)
        assert status == 200, page
        ticks = Counter(run["scheduled_for"] for run in page["jobs"])
        hosts = Counter(run["worker"]["host"] for run in page["jobs"] if run["worker"])
        print(f"\nswarm: two workers, a task every {TICK_SECONDS} s: {len(ticks)} ticks run, by {dict(hosts)}")
        assert ticks and max(ticks.values()) == 1, f"ticks run twice: {ticks}"
        times = sorted(datetime.fromisoformat(tick) for tick in ticks)
        assert len(times) >= 5
        assert all(b - a == timedelta(seconds=TICK_SECONDS) for a, b in zip(times, times[1:], strict=False)), times


def test_rolling_update_of_web_fails_no_request(stack):
    with stack.diagnosed():
        old_version = current_version(stack)
        assert old_version != NEW_VERSION
        with load(stack.port) as result:
            time.sleep(2)
            started = time.monotonic()
            earlier = stack.update("web", stack.images["new"])
            stack.wait_for_update("web", "completed", earlier, deadline=180)
            took = time.monotonic() - started
            time.sleep(2)
        seen = versions(result)
        swarm_figures(f"roll web to a new image (start-first, 1 at a time), {took:.0f} s", result,
                      f"update completed; versions seen: {', '.join(f'{v} {n}' for v, n in seen.items())}")
        assert not result.failures, f"{summary(result)}; failed: {result.failures[:5]}"
        assert {old_version, NEW_VERSION} <= set(seen), summary(result)
        assert stack.running_images("web") == [stack.images["new"]] * 2
        assert {current_version(stack) for _ in range(10)} == {NEW_VERSION}


def test_an_update_that_never_becomes_healthy_is_rolled_back(stack):
    with stack.diagnosed():
        before = stack.running_images("web")
        with load(stack.port) as result:
            time.sleep(2)
            started = time.monotonic()
            earlier = stack.update("web", stack.images["never-healthy"])
            status = stack.wait_for_update("web", "rollback_completed", earlier, deadline=180)
            took = time.monotonic() - started
            time.sleep(2)
        swarm_figures("roll web to an image that never becomes healthy", result,
                      f"rolled back automatically ({status['Message']}), tasks on the previous image; "
                      f"versions seen: {', '.join(f'{v} {n}' for v, n in versions(result).items())}", took)
        assert not result.failures, f"{summary(result)}; failed: {result.failures[:5]}"
        # Swarm reports the rollback completed while a task it re-created on the previous image
        # may still be starting (not yet healthy): it must get there.
        wait_until(lambda: stack.running_images("web") == before, 30, "web's tasks running the previous image",
                   interval=0.5)
        # Swarm puts a task in the service's DNS only once it is healthy: the bad one got nothing.
        assert NEVER_HEALTHY not in versions(result)


def test_rolling_the_worker_loses_no_job(stack):
    """Jobs running and queued while `worker` is replaced: each ends in a final status. The
    long one outlasts GRACEFUL_TIMEOUT (8 s) and ends `interrupted` (job1 has no retries);
    the others finish, on the old consumer or the new one."""
    jobs = JobsClient.over_http(stack.port, token=JOBS_TOKEN)
    with stack.diagnosed():
        long_job = jobs.submit("job1", seconds=30)["id"]
        jobs.wait_for_status(long_job, {"running"}, deadline=20)
        short_jobs = [jobs.submit("job1", seconds=2)["id"] for _ in range(6)]
        jobs.wait_for_status(short_jobs[0], {"running", "done"}, deadline=20)
        with load(stack.port) as result:
            started = time.monotonic()
            earlier = stack.update("worker", stack.images["new"])
            stack.wait_for_update("worker", "completed", earlier, deadline=120)
            took = time.monotonic() - started
            records = {job_id: jobs.wait_for_status(job_id, TERMINAL, deadline=60)
                       for job_id in [long_job, *short_jobs]}
        statuses = Counter(record["status"] for record in records.values())
        hosts = Counter(record["worker"]["host"] for record in records.values() if record["worker"])
        swarm_figures(f"roll worker with 1 job running past GRACEFUL_TIMEOUT and 6 of 2 s, {took:.0f} s", result,
                      f"jobs: {', '.join(f'{n} {s}' for s, n in sorted(statuses.items()))} (the 30 s one, "
                      f"past GRACEFUL_TIMEOUT); none lost or left running; run by {len(hosts)} consumers")
        assert not result.failures, f"{summary(result)}; failed: {result.failures[:5]}"
        assert records[long_job]["status"] == "interrupted", records[long_job]
        assert "the consumer stopped" in records[long_job]["error"]
        assert all(records[job_id]["status"] == "done" for job_id in short_jobs), records
        assert stack.running_images("worker") == [stack.images["new"]] * 2


def test_a_killed_worker_s_job_leaves_running_within_the_lease(stack):
    """`docker kill` of the worker running a job: swarm starts a new task, and its consumer ends
    the lost job once its lease (JOB_LEASE_SECONDS) expired."""
    jobs = JobsClient.over_http(stack.port, token=JOBS_TOKEN)
    with stack.diagnosed():
        job = jobs.submit("job1", seconds=45)["id"]
        host = jobs.wait_for_status(job, {"running"}, deadline=20)["worker"]["host"]
        killed = next(c for c in stack.containers("worker")
                      if docker("inspect", "--format", "{{.Config.Hostname}}", c).stdout.strip() == host)
        with load(stack.port) as result:
            docker("kill", killed)
            killed_at = time.monotonic()
            record = jobs.wait_for_status(job, TERMINAL, deadline=JOB_LEASE_SECONDS + LEASE_MARGIN)
            ended_after = time.monotonic() - killed_at
            wait_until(lambda: [c for c in stack.containers("worker") if c != killed], 60,
                       "swarm running a new worker task")
            fresh = jobs.wait_for_status(jobs.submit("job1", seconds=0)["id"], deadline=30)
        swarm_figures(f"docker kill of the worker running a job (JOB_LEASE_SECONDS={JOB_LEASE_SECONDS})", result,
                      f"the job {record['status']} (\"{record['error']}\"); swarm restarted the task; "
                      f"a new job {fresh['status']}", ended_after)
        assert not result.failures, f"{summary(result)}; failed: {result.failures[:5]}"
        assert record["status"] == "interrupted" and "was lost" in record["error"], record
        assert fresh["status"] == "done"
