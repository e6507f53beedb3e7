"""Issue 5's benchmark: every configuration side by side, on this machine, in one run.

Run it with `bench/run` (it prepares the tools, the packages and the image, then runs
`python -m bench.bench`). Each configuration is started on a free loopback port, loaded,
and stopped (also on Ctrl-C or failure); every load is bounded in time. Results go to
bench/results/: results.json, results.md and chart.png.
"""

import asyncio
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench import report
from deploy.settings import VARIABLES, Settings

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
BIN = Path(sys.executable).parent  # the benchmark's venv: python, gunicorn, uwsgi
IMAGE = os.environ.get("BENCH_IMAGE", "flask-stack:bench")
FAST_SECONDS = float(os.environ.get("BENCH_FAST_SECONDS", "10"))
SLOW_DEADLINE = float(os.environ.get("BENCH_SLOW_DEADLINE", "10"))  # a burst's bound, in seconds
MAX_LOAD = float(os.environ.get("BENCH_MAX_LOAD", "1.0"))  # wait (up to 10 min) for a quieter machine
ONLY = os.environ.get("BENCH_ONLY", "")  # e.g. "stack,uwsgi": a subset, while tuning
FAST_CONNECTIONS = (64, 256)
SLOW_CONCURRENCY = (100, 1000, 2000)
FAST_PATH = "/"  # an ordinary route of the app: a small JSON answer
SLOW_PATH = "/job1?seconds=1"
# The stack's own defaults (or the WEB_CONCURRENCY etc. set in this shell): gunicorn direct uses them too.
# (The image's folders do not matter for these; each run has its own, app_env() below.)
STACK = Settings.from_env({**{name: tempfile.gettempdir() for name in ("STACK_LOG_DIR", "STACK_RUN_DIR",
                                                                       "STACK_DATA_DIR")}, **os.environ})


class Server:
    """One configuration while it runs: processes in their own sessions, or one container."""

    def __init__(self, work: Path):
        self.work = work
        self.processes: list[subprocess.Popen] = []
        self.container = ""
        self.port = 0
        self.ready_s = 0.0

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

def app_env(server: Server) -> dict:
    """The environment the image gives its processes, with its folders in the run's folder."""
    folders = {"STACK_LOG_DIR": server.work / "log", "STACK_RUN_DIR": server.work / "run",
               "STACK_DATA_DIR": server.work / "data"}
    for folder in [*folders.values(), *(server.work / "log" / name for name in ("nginx", "gunicorn", "app", "jobs"))]:
        folder.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "PYTHONPATH": str(ROOT), **{name: str(path) for name, path in folders.items()}}


def dev_server(threaded: bool) -> Callable[[Server, int], None]:
    def start(server: Server, port: int) -> None:
        code = f"from app.wsgi import app; app.run('127.0.0.1', {port}, threaded={threaded})"
        server.spawn("flask", [BIN / "python", "-c", code], cwd=ROOT, env=app_env(server))
    return start


def gunicorn_direct(*options: str) -> Callable[[Server, int], None]:
    def start(server: Server, port: int) -> None:
        server.spawn("gunicorn", [BIN / "gunicorn", f"--bind=127.0.0.1:{port}", *options, "app.wsgi:app"],
                     cwd=ROOT, env=app_env(server))
    return start


def stack_native(server: Server, port: int) -> None:
    """The image's nginx.conf, gunicorn_config.py and deploy/, as the entrypoint and supervisord run them,
    with the folders in the run's folder and nginx on `port` instead of 80."""
    env = app_env(server)
    subprocess.run([BIN / "python", "-m", "deploy.configure"], cwd=ROOT, env=env, check=True, capture_output=True)
    nginx_folder = Path(env["STACK_RUN_DIR"]) / "nginx"
    nginx_conf = server.work / "nginx.conf"
    nginx_conf.write_text((ROOT / "nginx.conf").read_text().replace("listen 80 ", f"listen 127.0.0.1:{port} "))
    (nginx_folder / "nginx.conf").write_text(f"include {nginx_conf};\n")
    # In the image supervisord creates gunicorn's socket and passes it as fd 0: here gunicorn binds it.
    server.spawn("gunicorn", [BIN / "gunicorn", "--config", ROOT / "gunicorn_config.py",
                              f"--bind=unix:{env['STACK_RUN_DIR']}/gunicorn.sock"], cwd=ROOT, env=env)
    server.spawn("nginx", ["nginx", "-p", f"{nginx_folder}/", "-c", nginx_folder / "nginx.conf"])


def stack_container(server: Server, port: int) -> None:
    logs = server.work / "container-logs"
    logs.mkdir(exist_ok=True)
    passed_on = [f"--env={variable.name}" for variable in VARIABLES if variable.name in os.environ]
    server.container = docker("run", "-d", f"--publish=127.0.0.1:{port}:80", f"--volume={logs}:/var/log/app",
                              *passed_on, IMAGE)


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
    fast: bool = True  # run the fast-path workload
    slow: bool = True  # run the slow-I/O bursts


W = STACK.web_concurrency
CONFIGS = [
    Config("dev", "Flask dev server", dev_server(False)),
    Config("dev-threaded", "Flask dev server, threaded=True", dev_server(True)),
    Config("sync", "gunicorn sync × 4, direct", gunicorn_direct("--workers=4")),
    Config("gevent", f"gunicorn gevent × {W}, direct", gunicorn_direct(
        "--worker-class=gevent", f"--workers={W}", f"--worker-connections={STACK.worker_connections}")),
    Config("stack", f"this stack, native: nginx → gunicorn gevent × {W}", stack_native),
    Config("container", "this stack in its container (published port)", stack_container),
    Config("nginx", "nginx `return 200` (ceiling)", nginx_return200, slow=False),
    Config("uwsgi", "nginx → uwsgi × 16, cheaper 2 (tiangolo image)", uwsgi_nginx),
    Config("floor", "bare asyncio server that sleeps (floor)", asyncio_floor, fast=False),
]


@contextmanager
def running(config: Config, base: Path):
    """The configuration started (in a fresh folder) and answering; stopped on the way out, whatever happens."""
    work = Path(tempfile.mkdtemp(dir=base, prefix=f"{config.key}."))
    work.chmod(0o755)  # nginx's workers (nobody, when run as root) reach the sockets inside
    server, port = Server(work), free_port()
    started = time.monotonic()
    try:
        config.start(server, port)
        wait_until_ready(server, port)
        server.port, server.ready_s = port, time.monotonic() - started
        yield server
    finally:
        server.stop()


def wait_until_ready(server: Server, port: int, deadline: float = 60) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end and not server.died():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{FAST_PATH}", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    logs = "\n".join(f"--- {log.name}\n{log.read_text()[-2000:]}" for log in server.work.glob("*.log"))
    raise RuntimeError(f"not answering on port {port} within {deadline} s:\n{logs}")


# --- Measurements ----------------------------------------------------------------------

def process_memory(server: Server, full: bool) -> list[tuple[psutil.Process, object]]:
    """Each process of the server with its memory info (with `full`, also PSS); one that ended meanwhile is left out."""
    processes = []
    for pid in server.pids():
        root = psutil.Process(pid)
        processes += [root, *root.children(recursive=True)]
    found = []
    for process in processes:
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


def wrk(port: int, connections: int, seconds: float) -> dict:
    """wrk for `seconds` on the fast path: successful requests/s, latency, errors, and the cores wrk used."""
    before, proxy_before = cpu_seconds(resource.RUSAGE_CHILDREN), docker_proxy_cpu_seconds()
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds:g}s", "--timeout=10s",
               "-s", BENCH / "wrk-json.lua", f"http://127.0.0.1:{port}{FAST_PATH}"]
    run = subprocess.run([str(part) for part in command], capture_output=True, text=True,
                         timeout=seconds + 60, check=True)
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


async def one_request(port: int, path: str) -> tuple[int, float]:
    """A fresh connection, one GET, the whole answer read: (status or 0 on failure, end time)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        status = int((await reader.readline()).split()[1])
        await reader.read()
        writer.close()
    except (OSError, ValueError, IndexError):
        status = 0
    return status, time.perf_counter()


async def burst_async(port: int, count: int) -> dict:
    start = time.perf_counter()
    tasks = [asyncio.ensure_future(one_request(port, SLOW_PATH)) for _ in range(count)]
    done, pending = await asyncio.wait(tasks, timeout=SLOW_DEADLINE)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    answers = [task.result() for task in done]
    ok = sorted(end - start for status, end in answers if status == 200)
    # Unfinished requests count as slower than any finished one: past the deadline.
    latencies = ok + [float("inf")] * len(pending)
    wall = SLOW_DEADLINE if pending else max(end for _, end in answers) - start

    def percentile(p: float) -> float | None:
        value = latencies[min(len(latencies) - 1, int(len(latencies) * p / 100))] if latencies else None
        return None if value in (None, float("inf")) else round(value * 1000)

    return {"ok": len(ok), "errors": len(answers) - len(ok), "unfinished": len(pending),
            "wall_s": round(wall, 3), "rps": round(len(ok) / wall, 1),
            "p50_ms": percentile(50), "p99_ms": percentile(99)}


def burst(port: int, count: int) -> dict:
    """`count` slow requests at once, each on its own connection, bounded by SLOW_DEADLINE."""
    before = cpu_seconds(resource.RUSAGE_SELF)
    result = asyncio.run(burst_async(port, count))
    result["client_cores"] = round((cpu_seconds(resource.RUSAGE_SELF) - before) / result["wall_s"], 2)
    return result


def measure(config: Config, work: Path) -> dict:
    """The configuration's idle footprint, fast path and slow bursts (a fresh start for each burst)."""
    result = {"label": config.label, "fast": {}, "slow": {}}
    with running(config, work) as server:
        time.sleep(1)
        result["ready_s"] = round(server.ready_s, 2)
        result["idle"] = memory(server, full=True)
        if config.fast:
            wrk(server.port, FAST_CONNECTIONS[0], 1)  # warm-up, not recorded
            for connections in FAST_CONNECTIONS:
                print(f"  fast path, {connections} connections, {FAST_SECONDS:g} s", flush=True)
                outcome = result["fast"][connections] = {}
                with peak_memory(server, outcome):
                    outcome.update(wrk(server.port, connections, FAST_SECONDS))
    for count in SLOW_CONCURRENCY if config.slow else ():
        print(f"  slow I/O, {count} requests at once", flush=True)
        with running(config, work) as server:
            outcome = result["slow"][count] = {}
            with peak_memory(server, outcome):
                outcome.update(burst(server.port, count))
    return result


def container_facts(work: Path) -> dict:
    """Image size and layers, and the time from `docker run` to the first answer and to Docker's `healthy`."""
    facts = {"image": IMAGE, "image_mb": round(int(docker("image", "inspect", "-f", "{{.Size}}", IMAGE)) / 1e6),
             "base_mb": round(int(docker("image", "inspect", "-f", "{{.Size}}", "debian:bookworm-slim")) / 1e6),
             "layers": [size for size in docker("history", "--format", "{{.Size}}", IMAGE).split() if "MB" in size]}
    started = time.monotonic()
    with running(next(c for c in CONFIGS if c.key == "container"), work) as server:
        facts["ready_s"] = round(time.monotonic() - started, 2)
        while docker("inspect", "-f", "{{.State.Health.Status}}", server.container) != "healthy":
            if time.monotonic() - started > 60:
                raise RuntimeError("the container was not healthy within 60 s")
            time.sleep(0.1)
        facts["healthy_s"] = round(time.monotonic() - started, 2)
        time.sleep(3)  # idle
        # The container's memory as Docker counts it (its cgroup: each page once), and each
        # program's share of it (PSS of its processes).
        facts["cgroup_mb"] = megabytes(docker("stats", "--no-stream", "--format", "{{.MemUsage}}",
                                              server.container).split("/")[0])
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
               "settings": {"fast_seconds": FAST_SECONDS, "slow_deadline_s": SLOW_DEADLINE, "image": IMAGE,
                            "web_concurrency": W, "worker_connections": STACK.worker_connections}}
    work = Path(tempfile.mkdtemp(prefix="flask-stack-bench."))
    work.chmod(0o755)
    try:
        for config in CONFIGS:
            if not ONLY or config.key in ONLY.split(","):
                print(f"{config.key}: {config.label}", flush=True)
                results["configs"][config.key] = measure(config, work)
        if not ONLY or "container" in ONLY.split(","):
            results["container"] = container_facts(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["load_after"] = os.getloadavg()
    report.write(results, BENCH / "results")


if __name__ == "__main__":
    main()
