"""The benchmark: every configuration side by side, on this machine, in one run.

Run it with `bench/run` (it prepares the tools, the packages and the image, then runs
`python -m bench.bench`). Each configuration is started on a free loopback port (the
container without Docker's proxy: on a bridge network of the benchmark's own, at its own
address), loaded, and stopped (also on Ctrl-C or failure); every load is bounded in time.
Results go to bench/results/: results.json, results.md and chart.png. bench/README.md says
what each workload is.
"""

import asyncio
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import psutil

from app.compute import sum_of_squares
from bench import report
from deploy.settings import VARIABLES, Settings

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
BIN = Path(sys.executable).parent  # the benchmark's venv: python, gunicorn, uwsgi
IMAGE = os.environ.get("BENCH_IMAGE", "flask-stack:bench")
FAST_SECONDS = float(os.environ.get("BENCH_FAST_SECONDS", "10"))
MIXED_SECONDS = float(os.environ.get("BENCH_MIXED_SECONDS", "20"))
SLOW_DEADLINE = float(os.environ.get("BENCH_SLOW_DEADLINE", "10"))  # a burst's bound, in seconds
MAX_LOAD = float(os.environ.get("BENCH_MAX_LOAD", "1.0"))  # wait (up to 10 min) for a quieter machine
ONLY = os.environ.get("BENCH_ONLY", "")  # e.g. "stack,uwsgi": a subset, while tuning
FAST_CONNECTIONS = (64, 256)
SLOW_CONCURRENCY = (100, 1000, 2000)
FAST_PATH = "/"  # an ordinary route of the app: a small JSON answer
SLOW_PATH = "/job1?seconds=1"


def compute_n_for(seconds: float) -> int:
    """The `n` for which the app's /compute takes `seconds` of CPU on this machine (its own
    function, timed here: the median of 50 runs after one to warm up), in hundreds."""
    def one_run() -> float:
        started = time.process_time()
        sum_of_squares(20_000)
        return time.process_time() - started
    one_run()
    return max(100, int(round(20_000 * seconds / statistics.median(one_run() for _ in range(50)), -2)))


# The users' traffic: a fast JSON route with ~1 ms of CPU, a 50 ms wait on I/O, a 1 s wait.
COMPUTE_N = compute_n_for(0.001)
MIXED = (("fast", f"/compute?n={COMPUTE_N}", 0.80), ("io_50ms", "/job1?seconds=0.05", 0.15),
         ("io_1s", SLOW_PATH, 0.05))
MIXED_CONNECTIONS = 256
# The configurations that the ratio targets compare, measured again in alternated rounds.
ROUNDS_CONFIGS = ("uwsgi", "stack", "container-direct", "stack-json", "stack-bare")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
ROUND_SECONDS = 5
RECYCLE_MAX_REQUESTS = 2000  # so that workers are replaced several times during the run
# The stack's own defaults (or the WEB_CONCURRENCY etc. set in this shell): gunicorn direct uses them too.
# (The image's folders do not matter for these; each run has its own, app_env() below.)
STACK = Settings.from_env({**{name: tempfile.gettempdir() for name in ("STACK_LOG_DIR", "STACK_RUN_DIR",
                                                                       "STACK_DATA_DIR")}, **os.environ})
# One client address (the benchmark's) opens thousands of connections at once: the stack's
# per-client limit is a load balancer's, lifted, as for a trusted balancer in production.
BENCH_ENV = {"CLIENT_MAX_CONNECTIONS": "0"}


class Server:
    """One configuration while it runs: processes in their own sessions, or one container."""

    def __init__(self, work: Path):
        self.work = work
        self.processes: list[subprocess.Popen] = []
        self.container = ""
        self.address = ("127.0.0.1", 0)
        self.ready_s = 0.0
        self.env: dict = {}
        self.log_dir = work / "log"  # the stack's STACK_LOG_DIR (a container's is mounted here)

    def spawn(self, name: str, command: list, **kwargs) -> None:
        with open(self.work / f"{name}.log", "ab") as log:
            self.processes.append(subprocess.Popen(
                [str(part) for part in command], stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, **kwargs))

    def pids(self) -> list[int]:
        if self.container:
            return [int(docker("inspect", "-f", "{{.State.Pid}}", self.container))]
        return [process.pid for process in self.processes]

    def died(self) -> bool:
        return any(process.poll() is not None for process in self.processes)

    def reload_app(self) -> None:
        """`reload app`: gunicorn replaces its workers (HUP to its master)."""
        if self.container:
            docker("exec", self.container, "reload", "app")
        else:
            master = int((Path(self.env["STACK_RUN_DIR"]) / "gunicorn.pid").read_text())
            os.kill(master, signal.SIGHUP)

    def stop(self) -> None:
        if self.container:
            docker("rm", "-f", self.container)
        for process in reversed(self.processes):
            signal_group(process, signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                signal_group(process, signal.SIGKILL)
                process.wait()


def signal_group(process: subprocess.Popen, signum: signal.Signals) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True, timeout=120).stdout.strip()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def render(template: str, work: Path, port: int) -> Path:
    """bench/TEMPLATE with @WORK@ and @PORT@ filled in, written to the work folder."""
    text = (BENCH / template).read_text().replace("@WORK@", str(work)).replace("@PORT@", str(port))
    path = work / template
    path.write_text(text)
    return path


# --- The configurations: each starts its processes serving on 127.0.0.1:port -------------

def app_env(server: Server, **overrides: str) -> dict:
    """The environment the image gives its processes, with its folders in the run's folder."""
    folders = {"STACK_LOG_DIR": server.log_dir, "STACK_RUN_DIR": server.work / "run",
               "STACK_DATA_DIR": server.work / "data"}
    for folder in [*folders.values(), *(server.log_dir / name for name in ("nginx", "gunicorn", "app", "jobs"))]:
        folder.mkdir(parents=True, exist_ok=True)
    # Its own metrics port, so that several native stacks can run side by side (alternated_rounds).
    server.env = {**os.environ, "PYTHONPATH": str(ROOT), **{name: str(path) for name, path in folders.items()},
                  **BENCH_ENV, "METRICS_PORT": str(free_port()), **overrides}
    return server.env


def dev_server(threaded: bool) -> Callable[[Server, int], None]:
    def start(server: Server, port: int) -> None:
        code = f"from app import create_app; create_app().run('127.0.0.1', {port}, threaded={threaded})"
        server.spawn("flask", [BIN / "python", "-c", code], cwd=ROOT, env=app_env(server))
    return start


def gunicorn_direct(*options: str) -> Callable[[Server, int], None]:
    def start(server: Server, port: int) -> None:
        server.spawn("gunicorn", [BIN / "gunicorn", f"--bind=127.0.0.1:{port}", *options, "app:create_app()"],
                     cwd=ROOT, env=app_env(server))
    return start


def stack_native(*gunicorn_options: str, **overrides: str) -> Callable[[Server, int], None]:
    """The image's nginx.conf, gunicorn_config.py and deploy/, as the entrypoint and supervisord run
    them, with the folders in the run's folder, nginx on `port` instead of 80, and `overrides`
    (gunicorn's command-line `gunicorn_options` over its settings: bench/costs.py)."""
    def start(server: Server, port: int) -> None:
        env = app_env(server, **overrides)
        configure = subprocess.run([BIN / "python", "-m", "deploy.configure"], cwd=ROOT, env=env, check=True,
                                   capture_output=True, text=True).stdout
        env.update(re.findall(r"(\w+)=(\S*)", configure))  # the entrypoint's exports (the metrics' folder...)
        nginx_folder = Path(env["STACK_RUN_DIR"]) / "nginx"
        nginx_conf = server.work / "nginx.conf"
        nginx_conf.write_text((ROOT / "nginx.conf").read_text().replace("listen 80 ", f"listen 127.0.0.1:{port} "))
        (nginx_folder / "nginx.conf").write_text(f"include {nginx_conf};\n")
        # In the image supervisord creates gunicorn's socket and passes it as fd 0: here gunicorn binds it.
        server.spawn("gunicorn", [BIN / "gunicorn", "--config", ROOT / "gunicorn_config.py",
                                  f"--bind=unix:{env['STACK_RUN_DIR']}/gunicorn.sock", *gunicorn_options],
                     cwd=ROOT, env=env)
        server.spawn("nginx", ["nginx", "-p", f"{nginx_folder}/", "-c", nginx_folder / "nginx.conf", "-e", "stderr"])
    return start


def stack_container(direct: bool, **overrides: str) -> Callable[[Server, int], None]:
    """The image as users run it: through the published port (Docker's userland proxy on
    loopback), or `direct`ly at its address on the benchmark's bridge network (no proxy)."""
    def start(server: Server, port: int) -> None:
        server.log_dir.mkdir(exist_ok=True)
        passed_on = [f"--env={variable.name}" for variable in VARIABLES if variable.name in os.environ]
        where = [f"--network={bridge_network()}"] if direct else [f"--publish=127.0.0.1:{port}:80"]
        server.container = docker("run", "-d", *where, f"--volume={server.log_dir}:/var/log/app", *passed_on,
                                  *(f"--env={name}={value}" for name, value in {**BENCH_ENV, **overrides}.items()),
                                  IMAGE)
        if direct:
            ip = docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", server.container)
            server.address = (ip, 80)
    return start


BRIDGE = "flask-stack-bench"


def bridge_network() -> str:
    """A bridge network of the benchmark's own (removed at the end of the run)."""
    if subprocess.run(["docker", "network", "inspect", BRIDGE], capture_output=True).returncode != 0:
        docker("network", "create", BRIDGE)
    return BRIDGE


def nginx_return200(server: Server, port: int) -> None:
    render("nginx-temp.conf", server.work, port)
    conf = render("nginx-return200.conf", server.work, port)
    server.spawn("nginx", ["nginx", "-c", conf, "-e", server.work / "nginx-return200-error.log"])


def uwsgi_nginx(server: Server, port: int) -> None:
    render("nginx-temp.conf", server.work, port)
    server.spawn("uwsgi", [BIN / "uwsgi", "--ini", render("uwsgi.ini", server.work, port)], cwd=ROOT,
                 env=app_env(server))
    conf = render("nginx-uwsgi.conf", server.work, port)
    server.spawn("nginx", ["nginx", "-c", conf, "-e", server.work / "nginx-uwsgi-error.log"])


def asyncio_floor(server: Server, port: int) -> None:
    server.spawn("floor", [BIN / "python", BENCH / "floor.py", port])


@dataclass(frozen=True)
class Config:
    key: str
    label: str
    start: Callable[[Server, int], None]
    workloads: tuple[str, ...] = ("fast", "mixed", "slow")
    with_env: Callable[..., Callable[[Server, int], None]] | None = None  # `start` with variables added


W = STACK.web_concurrency
CONFIGS = [
    Config("dev", "Flask dev server", dev_server(False)),
    Config("dev-threaded", "Flask dev server, threaded=True", dev_server(True)),
    Config("sync", "gunicorn sync × 4, direct", gunicorn_direct("--workers=4")),
    Config("gevent", f"gunicorn gevent × {W}, direct", gunicorn_direct(
        "--worker-class=gevent", f"--workers={W}", f"--worker-connections={STACK.worker_connections}")),
    Config("stack", f"this stack, native: nginx → gunicorn gevent × {W}", stack_native(),
           ("fast", "mixed", "slow", "recycle"), stack_native),
    Config("stack-json", "this stack, native, LOG_FORMAT=json (metrics on, the default)",
           stack_native(LOG_FORMAT="json"), ("fast",)),
    Config("stack-bare", "this stack, native, METRICS_PORT=0 (no metrics, text logs)",
           stack_native(METRICS_PORT="0"), ("fast",)),
    Config("container", "this stack in its container (published port)", stack_container(direct=False)),
    Config("container-direct", "this stack in its container (its own address, no proxy)",
           stack_container(direct=True), ("fast", "slow", "recycle"), partial(stack_container, True)),
    Config("nginx", "nginx `return 200` (ceiling)", nginx_return200, ("fast",)),
    Config("uwsgi", "nginx → uwsgi × 16, cheaper 2 (tiangolo image)", uwsgi_nginx),
    Config("floor", "bare asyncio server that sleeps (floor)", asyncio_floor, ("slow",)),
]


def config_named(key: str) -> Config:
    return next(config for config in CONFIGS if config.key == key)


@contextmanager
def running(config: Config, base: Path):
    """The configuration started (in a fresh folder) and answering; stopped on the way out, whatever happens."""
    work = Path(tempfile.mkdtemp(dir=base, prefix=f"{config.key}."))
    work.chmod(0o755)  # nginx's workers (nobody, when run as root) reach the sockets inside
    server, port = Server(work), free_port()
    server.address = ("127.0.0.1", port)
    started = time.monotonic()
    try:
        config.start(server, port)
        wait_until_ready(server)
        server.ready_s = time.monotonic() - started
        yield server
    finally:
        server.stop()


def url(address: tuple[str, int], path: str) -> str:
    return f"http://{address[0]}:{address[1]}{path}"


def wait_until_ready(server: Server, deadline: float = 60) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end and not server.died():
        try:
            with urllib.request.urlopen(url(server.address, FAST_PATH), timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    logs = "\n".join(f"--- {log.name}\n{log.read_text()[-2000:]}" for log in server.work.glob("*.log"))
    ended = [f"{Path(process.args[0]).name} exited with status {process.returncode}"
             for process in server.processes if process.poll() is not None]
    why = "; ".join(ended) or f"not answering within {deadline} s"
    raise RuntimeError(f"{why} (at {server.address}):\n{logs}")


# --- Measurements ----------------------------------------------------------------------

def processes_of(server: Server) -> list[psutil.Process]:
    """Every process of the server: each one it started (or its container's first) and their descendants."""
    processes = []
    for pid in server.pids():
        root = psutil.Process(pid)
        processes += [root, *root.children(recursive=True)]
    return processes


def process_memory(server: Server, full: bool) -> list[tuple[psutil.Process, object]]:
    """Each process of the server with its memory info (with `full`, also PSS); one that ended meanwhile is left out."""
    found = []
    for process in processes_of(server):
        try:
            found.append((process, process.memory_full_info() if full else process.memory_info()))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def memory(server: Server, full: bool = False) -> dict:
    """RSS (and with `full`, PSS: shared pages counted once) of every process of the server, in MB."""
    infos = [info for _, info in process_memory(server, full)]
    result = {"rss_mb": round(sum(info.rss for info in infos) / 2**20, 1), "processes": len(infos)}
    return {**result, "pss_mb": round(sum(info.pss for info in infos) / 2**20, 1)} if full else result


@contextmanager
def peak_memory(server: Server, result: dict):
    """Samples the server's RSS while the block runs; stores the peak in result["peak_rss_mb"]."""
    peak, done = [0.0], threading.Event()

    def sample() -> None:
        while not done.wait(0.25):
            try:
                peak[0] = max(peak[0], memory(server)["rss_mb"])
            except (psutil.NoSuchProcess, subprocess.CalledProcessError):
                pass

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        yield
    finally:
        done.set()
        sampler.join()
        result["peak_rss_mb"] = peak[0]


def cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def docker_proxy_cpu_seconds() -> float:
    """CPU time of Docker's userland proxies, which copy every byte of a published port on loopback."""
    total = 0.0
    for process in psutil.process_iter(["name", "cpu_times"]):
        if process.info["name"] == "docker-proxy" and process.info["cpu_times"]:
            total += process.info["cpu_times"].user + process.info["cpu_times"].system
    return total


def wrk(address: tuple[str, int], connections: int, seconds: float, path: str = FAST_PATH,
        post_body: str | None = None) -> dict:
    """wrk for `seconds`: successful requests/s, latency, errors, and the cores wrk used."""
    before, proxy_before = cpu_seconds(resource.RUSAGE_CHILDREN), docker_proxy_cpu_seconds()
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds:g}s", "--timeout=10s",
               "-s", BENCH / "wrk-json.lua", url(address, path)]
    env = {**os.environ, **({"WRK_POST_BODY": post_body} if post_body else {})}
    run = subprocess.run([str(part) for part in command], capture_output=True, text=True,
                         timeout=seconds + 60, check=True, env=env)
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    duration = summary["duration_us"] / 1e6
    return {
        "rps": round((summary["requests"] - summary["status"]) / duration),  # a 502 is no answer
        "p50_ms": summary["p50_us"] / 1000,
        "p99_ms": summary["p99_us"] / 1000,
        "errors": sum(summary[kind] for kind in ("connect", "read", "write", "status", "timeout")),
        "client_cores": round((cpu_seconds(resource.RUSAGE_CHILDREN) - before) / duration, 2),
        "docker_proxy_cores": round((docker_proxy_cpu_seconds() - proxy_before) / duration, 2),
    }


async def one_request(address: tuple[str, int], path: str) -> tuple[int, float]:
    """A fresh connection, one GET, the whole answer read: (status or 0 on failure, end time)."""
    try:
        reader, writer = await asyncio.open_connection(*address)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {address[0]}\r\nConnection: close\r\n\r\n".encode())
        status = int((await reader.readline()).split()[1])
        await reader.read()
        writer.close()
    except (OSError, ValueError, IndexError):
        status = 0
    return status, time.perf_counter()


def percentile(values: list[float], p: float) -> float | None:
    """The p-th percentile of `values` (in s) in ms; None when there is none or it is past a deadline."""
    if not values:
        return None
    value = sorted(values)[min(len(values) - 1, int(len(values) * p / 100))]
    return None if value == float("inf") else round(value * 1000, 1)


async def burst_async(address: tuple[str, int], count: int) -> dict:
    start = time.perf_counter()
    tasks = [asyncio.ensure_future(one_request(address, SLOW_PATH)) for _ in range(count)]
    done, pending = await asyncio.wait(tasks, timeout=SLOW_DEADLINE)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    answers = [task.result() for task in done]
    ok = [end - start for status, end in answers if status == 200]
    # Unfinished requests count as slower than any finished one: past the deadline.
    latencies = ok + [float("inf")] * len(pending)
    wall = SLOW_DEADLINE if pending else max(end for _, end in answers) - start
    return {"ok": len(ok), "errors": len(answers) - len(ok), "unfinished": len(pending),
            "wall_s": round(wall, 3), "rps": round(len(ok) / wall, 1),
            "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99)}


def burst(address: tuple[str, int], count: int) -> dict:
    """`count` slow requests at once, each on its own connection, bounded by SLOW_DEADLINE."""
    before = cpu_seconds(resource.RUSAGE_SELF)
    result = asyncio.run(burst_async(address, count))
    result["client_cores"] = round((cpu_seconds(resource.RUSAGE_SELF) - before) / result["wall_s"], 2)
    return result


@dataclass
class MixedTally:
    latencies: dict = field(default_factory=lambda: {kind: [] for kind, _, _ in MIXED})
    errors: int = 0


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """One HTTP/1.1 answer: its status, and whether the server keeps the connection open."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        while (size := int((await reader.readline()).split(b";")[0], 16)):
            await reader.readexactly(size + 2)
        await reader.readline()
    else:
        await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers.get("connection", "").lower() != "close"


async def mixed_client(address: tuple[str, int], deadline: float, tally: MixedTally, chooser: random.Random):
    """One connection, kept alive, sending the mix one request after the other until the deadline."""
    kinds, weights = [(kind, path) for kind, path, _ in MIXED], [weight for _, _, weight in MIXED]
    connection = None
    while time.perf_counter() < deadline:
        kind, path = chooser.choices(kinds, weights)[0]
        started = time.perf_counter()
        try:
            if connection is None:
                connection = await asyncio.open_connection(*address)
            reader, writer = connection
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {address[0]}\r\n\r\n".encode())
            status, keep = await asyncio.wait_for(read_answer(reader), timeout=10)
        except (TimeoutError, OSError, ValueError, IndexError, asyncio.IncompleteReadError):
            tally.errors += 1
            connection = None
            continue
        if status == 200:
            tally.latencies[kind].append(time.perf_counter() - started)
        else:
            tally.errors += 1
        if not keep:
            connection[1].close()
            connection = None


async def mixed_async(address: tuple[str, int], seconds: float) -> MixedTally:
    tally, deadline = MixedTally(), time.perf_counter() + seconds
    chooser = random.Random(1)  # the same mix for every configuration
    await asyncio.gather(*(mixed_client(address, deadline, tally, random.Random(chooser.random()))
                           for _ in range(MIXED_CONNECTIONS)))
    return tally


def mixed(address: tuple[str, int]) -> dict:
    """The users' traffic: MIXED_CONNECTIONS connections for MIXED_SECONDS, each request picked at random."""
    before = cpu_seconds(resource.RUSAGE_SELF)
    tally = asyncio.run(mixed_async(address, MIXED_SECONDS))
    ok = sum(len(latencies) for latencies in tally.latencies.values())
    return {"rps": round(ok / MIXED_SECONDS), "ok": ok, "errors": tally.errors,
            "client_cores": round((cpu_seconds(resource.RUSAGE_SELF) - before) / MIXED_SECONDS, 2),
            **{f"{kind}_p50_ms": percentile(latencies, 50) for kind, latencies in tally.latencies.items()},
            **{f"{kind}_p99_ms": percentile(latencies, 99) for kind, latencies in tally.latencies.items()},
            **{f"{kind}_ok": len(latencies) for kind, latencies in tally.latencies.items()}}


def recycle_and_reload(config: Config, work: Path) -> dict:
    """The fast path at c256 for 20 s with MAX_REQUESTS low (workers replaced every few seconds)
    and a `reload app` in the middle: GET, then POST."""
    results = {}
    for method, path, body in (("GET", FAST_PATH, None), ("POST", "/compute", '{"n": 100}')):
        recycling = Config(config.key, config.label, config.with_env(MAX_REQUESTS=str(RECYCLE_MAX_REQUESTS)))
        with running(recycling, work) as server:
            reload = threading.Timer(10, server.reload_app)
            reload.start()
            try:
                results[method] = wrk(server.address, 256, 20, path, post_body=body)
            finally:
                reload.cancel()
            log = (server.log_dir / "gunicorn/error.log").read_text()
            results[method]["workers_replaced"] = log.count("Autorestarting worker after current request")
    return results


def measure(config: Config, work: Path) -> dict:
    """The configuration's idle footprint and workloads (a fresh start for each burst)."""
    result = {"label": config.label, "fast": {}, "slow": {}}
    with running(config, work) as server:
        time.sleep(1)
        result["ready_s"] = round(server.ready_s, 2)
        result["idle"] = memory(server, full=True)
        if "fast" in config.workloads:
            wrk(server.address, FAST_CONNECTIONS[0], 1)  # warm-up, not recorded
            for connections in FAST_CONNECTIONS:
                print(f"  fast path, {connections} connections, {FAST_SECONDS:g} s", flush=True)
                outcome = result["fast"][connections] = {}
                with peak_memory(server, outcome):
                    outcome.update(wrk(server.address, connections, FAST_SECONDS))
    if "mixed" in config.workloads:
        print(f"  mixed traffic, {MIXED_CONNECTIONS} connections, {MIXED_SECONDS:g} s", flush=True)
        with running(config, work) as server:
            result["mixed"] = {}
            with peak_memory(server, result["mixed"]):
                result["mixed"].update(mixed(server.address))
            if server.container:
                result["after_load_cgroup_mb"] = container_memory_mb(server)
    for count in SLOW_CONCURRENCY if "slow" in config.workloads else ():
        print(f"  slow I/O, {count} requests at once", flush=True)
        with running(config, work) as server:
            outcome = result["slow"][count] = {}
            with peak_memory(server, outcome):
                outcome.update(burst(server.address, count))
    if "recycle" in config.workloads:
        print(f"  fast path with MAX_REQUESTS={RECYCLE_MAX_REQUESTS} and a reload, GET and POST", flush=True)
        result["recycle"] = recycle_and_reload(config, work)
    return result


def round_turn(server: Server, connections: int) -> dict:
    """One configuration's turn in a round: ROUND_SECONDS of wrk."""
    return wrk(server.address, connections, ROUND_SECONDS)


def alternated_rounds(work: Path, configs: Sequence[Config] = tuple(map(config_named, ROUNDS_CONFIGS)),
                      connection_counts: Sequence[int] = FAST_CONNECTIONS,
                      turn: Callable[[Server, int], dict] = round_turn) -> list[dict]:
    """The fast path of `configs` (ROUNDS_CONFIGS) again, in turns: they run side by side, and
    each round gives each of them its `turn`, at each number of connections. This machine's
    speed drifts by up to 30% between one configuration's turn and the next one's; measured
    in alternation, both sides of a ratio see the same drift, and the targets take the median
    of the rounds' ratios. Each round: {connections: {key: the turn's result}}."""
    with ExitStack() as stack:
        servers = {config.key: stack.enter_context(running(config, work)) for config in configs}
        for server in servers.values():
            wrk(server.address, connection_counts[0], 1)  # warm-up, not recorded
        rounds = []
        for number in range(1, ROUNDS + 1):
            print(f"  round {number} of {ROUNDS}", flush=True)
            rounds.append({connections: {key: turn(server, connections) for key, server in servers.items()}
                           for connections in connection_counts})
    return rounds


def container_memory_mb(server: Server) -> int:
    """The container's memory as Docker counts it (its cgroup: each page once)."""
    return megabytes(docker("stats", "--no-stream", "--format", "{{.MemUsage}}", server.container).split("/")[0])


def cgroup_split_mb(server: Server) -> dict:
    """What Docker's figure is made of: the processes' own memory (anon) and the active page
    cache charged to the container (shared libraries, .pyc files, logs: a container is charged
    for a file's pages when it is the first to read them)."""
    pid = server.pids()[0]
    line = next(line for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
                if line.split(":")[1] in ("memory", ""))
    folder = Path("/sys/fs/cgroup") / ("memory" if line.split(":")[1] == "memory" else "") / line.split(":")[2][1:]
    stat = dict(line.split() for line in (folder / "memory.stat").read_text().splitlines())
    anon, file, inactive = (("total_rss", "total_cache", "total_inactive_file") if "total_rss" in stat
                            else ("anon", "file", "inactive_file"))
    # Docker leaves out the inactive page cache, which the kernel reclaims first.
    return {"anon": round(int(stat[anon]) / 1e6), "file": round((int(stat[file]) - int(stat[inactive])) / 1e6)}


def container_facts(work: Path) -> dict:
    """Image size and layers, and the time from `docker run` to the first answer and to Docker's `healthy`."""
    facts = {"image": IMAGE, "image_mb": round(int(docker("image", "inspect", "-f", "{{.Size}}", IMAGE)) / 1e6),
             "base_mb": round(int(docker("image", "inspect", "-f", "{{.Size}}", "debian:bookworm-slim")) / 1e6),
             "layers": [size for size in docker("history", "--format", "{{.Size}}", IMAGE).split() if "MB" in size]}
    started = time.monotonic()
    with running(config_named("container"), work) as server:
        facts["ready_s"] = round(time.monotonic() - started, 2)
        while docker("inspect", "-f", "{{.State.Health.Status}}", server.container) != "healthy":
            if time.monotonic() - started > 60:
                raise RuntimeError("the container was not healthy within 60 s")
            time.sleep(0.1)
        facts["healthy_s"] = round(time.monotonic() - started, 2)
        time.sleep(3)  # idle
        # The container's memory as Docker counts it, and each program's share of it (PSS).
        facts["cgroup_mb"] = container_memory_mb(server)
        facts["cgroup_split_mb"] = cgroup_split_mb(server)
        programs: dict[str, float] = {}
        for process, info in process_memory(server, full=True):
            try:
                name = program_name(process)
            except psutil.NoSuchProcess:  # e.g. a health check that has just ended
                continue
            programs[name] = programs.get(name, 0) + info.pss / 1e6
        facts["programs_pss_mb"] = {name: round(mb) for name, mb in sorted(programs.items(), key=lambda item: -item[1])}
    return facts


def megabytes(size: str) -> int:
    """Docker's "132.1MiB" (or kB, GiB...) in MB."""
    match = re.fullmatch(r"\s*([\d.]+)\s*(B|kB|KiB|MB|MiB|GB|GiB)\s*", size)
    if not match:
        raise RuntimeError(f"docker stats gave a memory size this benchmark cannot read: {size!r}")
    number, unit = match.groups()
    bytes_per_unit = {"B": 1, "kB": 1e3, "KiB": 2**10, "MB": 1e6, "MiB": 2**20, "GB": 1e9, "GiB": 2**30}
    return round(float(number) * bytes_per_unit[unit] / 1e6)


def program_name(process: psutil.Process) -> str:
    """The program a process belongs to: its command name, or for `python3 -m module`, the module."""
    command = process.cmdline()
    return command[command.index("-m") + 1] if "-m" in command[:2] else process.name()


def wait_for_quiet_machine() -> None:
    for _ in range(60):
        if os.getloadavg()[0] <= MAX_LOAD:
            return
        print(f"load average {os.getloadavg()[0]:.2f} > {MAX_LOAD}: waiting (at most 10 min)", flush=True)
        time.sleep(10)


def main() -> None:
    # SIGTERM (a `timeout`, a kill) unwinds like Ctrl-C, so every server started is stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 2000 connections, for wrk and servers too
    wait_for_quiet_machine()
    results = {"machine": report.machine(), "load_before": os.getloadavg(), "configs": {},
               "settings": {"fast_seconds": FAST_SECONDS, "mixed_seconds": MIXED_SECONDS,
                            "mixed_connections": MIXED_CONNECTIONS, "slow_deadline_s": SLOW_DEADLINE,
                            "image": IMAGE, "web_concurrency": W, "worker_connections": STACK.worker_connections,
                            "recycle_max_requests": RECYCLE_MAX_REQUESTS, "compute_n": COMPUTE_N,
                            "round_seconds": ROUND_SECONDS}}
    work = Path(tempfile.mkdtemp(prefix="flask-stack-bench."))
    work.chmod(0o755)
    try:
        for config in CONFIGS:
            if not ONLY or config.key in ONLY.split(","):
                print(f"{config.key}: {config.label}", flush=True)
                results["configs"][config.key] = measure(config, work)
        if not ONLY or "rounds" in ONLY.split(","):
            print(f"alternated rounds: {', '.join(ROUNDS_CONFIGS)}", flush=True)
            results["rounds"] = alternated_rounds(work)
        if not ONLY or "container" in ONLY.split(","):
            results["container"] = container_facts(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        subprocess.run(["docker", "network", "rm", BRIDGE], capture_output=True)
    results["load_after"] = os.getloadavg()
    report.write(results, BENCH / "results")


if __name__ == "__main__":
    main()
