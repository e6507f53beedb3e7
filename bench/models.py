"""Serving a model (issue 25): memory with and without PRELOAD_APP, `@batched` against one
inference a request, /healthz while the model saturates the CPUs, and workers recycled with
PRELOAD_APP, each compared within this run.

    bench/.venv/bin/python -m bench.models    # after bench/run has made bench/.venv; about 6 minutes

It builds bench/model-image (the model service, FROM the stack's image: BENCH_IMAGE, as
bench/run builds or names it; the PIP_* variables of the shell reach the build) as
flask-stack-bench-models, runs every container at its own address on bench.py's bridge network
(no Docker proxy), sends traffic only to them, bounds every load in time, and writes
bench/results/models.md. bench/README.md says what each figure is.
"""

import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bench import bench, report
from bench.bench import Config, Server
from deploy.settings import usable_cpus

MODEL_IMAGE = "flask-stack-bench-models"
MODEL_MB = 300
MEMORY_WORKERS = 4
MEMORY_REQUESTS = 10_000
CONNECTIONS = 64
TURN_SECONDS = 5
HEALTH_SECONDS = 10
RECYCLE_MAX_REQUESTS = 500  # a worker replaced about every second under this load
# Targets (issue 25)
MEMORY_BOUND = 1.3  # × (the model + the stack's idle memory), with PRELOAD_APP
BATCHING_RATIO = 3.0
HEALTH_P99_MS = 50
RECYCLING_P99_RATIO = 1.5
IDLE_BOUND_MB = 100


def build_model_image() -> None:
    mirror = [f"--build-arg={name}={os.environ[name]}" for name in ("PIP_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX")
              if os.environ.get(name)]
    subprocess.run(["docker", "build", "-q", "--network=host", *mirror, f"--build-arg=STACK_IMAGE={bench.IMAGE}",
                    "-t", MODEL_IMAGE, str(bench.BENCH / "model-image")], check=True, capture_output=True, timeout=900)


def container(image: str, **env: str) -> Callable[[Server, int], None]:
    """The image at its own address on the benchmark's bridge network, its logs in the run's folder."""
    def start(server: Server, port: int) -> None:
        server.log_dir.mkdir(exist_ok=True)
        server.container = bench.docker("run", "-d", f"--network={bench.bridge_network()}",
                                        f"--volume={server.log_dir}:/var/log/app",
                                        *(f"--env={name}={value}"
                                          for name, value in {**bench.BENCH_ENV, **env}.items()),
                                        image)
        server.address = (bench.docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                                       server.container), 80)
    return start


def model_service(key: str, **env: str) -> Config:
    settings = {"ROLE": "web", "MODEL_MB": str(MODEL_MB), **env}  # web: the consumer would import the model too
    return Config(key, ", ".join(f"{name}={value}" for name, value in env.items()), container(MODEL_IMAGE, **settings))


def settled_memory_mb(server: Server) -> int:
    """`docker stats` of the container once every worker has started and loaded what it loads."""
    time.sleep(8)
    return bench.container_memory_mb(server)


def send_requests(server: Server, path: str, count: int) -> int:
    """At least `count` requests at c64 (in 5 s runs of wrk, at most 30 of them): how many were answered."""
    answered = 0
    for _ in range(30):
        if answered >= count:
            break
        answered += bench.wrk(server.address, CONNECTIONS, 5, path)["rps"] * 5
    return answered


def memory(work: Path) -> dict:
    results = {}
    stack = Config("stack", f"the stack's image, WEB_CONCURRENCY={MEMORY_WORKERS}, ROLE=web",
                   container(bench.IMAGE, WEB_CONCURRENCY=str(MEMORY_WORKERS), ROLE="web"))
    default = Config("default", "the stack's image with its defaults (ROLE=all)", container(bench.IMAGE))
    for config in (default, stack):
        print(f"  idle: {config.label}", flush=True)
        with bench.running(config, work) as server:
            results[config.key] = {"idle_mb": settled_memory_mb(server)}
    for preload in ("true", "false"):
        config = model_service(f"preload-{preload}", PRELOAD_APP=preload, WEB_CONCURRENCY=str(MEMORY_WORKERS))
        print(f"  model of {MODEL_MB} MB: {config.label}", flush=True)
        with bench.running(config, work) as server:
            results[config.key] = {"idle_mb": settled_memory_mb(server)}
            results[config.key]["requests"] = send_requests(server, "/batched", MEMORY_REQUESTS)
            results[config.key]["after_mb"] = settled_memory_mb(server)
    return results


def metric_sum_and_count(server: Server, name: str) -> tuple[float, float]:
    read = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9100/metrics').read().decode())"
    text = bench.docker("exec", server.container, "python3", "-c", read)
    found = {kind: float(value) for kind, value in re.findall(rf"^{name}_(sum|count)\{{[^}}]*\}} (\S+)$", text, re.M)}
    return found.get("sum", 0.0), found.get("count", 0.0)


def worker_timeouts(server: Server) -> int:
    return (server.log_dir / "gunicorn/error.log").read_text().count("WORKER TIMEOUT")


def batching(work: Path) -> dict:
    """/single and /batched in turns at c64 (BENCH_ROUNDS rounds), then /healthz while each saturates the CPUs."""
    config = model_service("batching", PRELOAD_APP="true")
    paths = ("/single", "/batched")
    with bench.running(config, work) as server:
        time.sleep(3)
        for path in paths:
            bench.wrk(server.address, CONNECTIONS, 2, path)  # warm-up, not recorded
        rounds = []
        for number in range(1, bench.ROUNDS + 1):
            print(f"  round {number} of {bench.ROUNDS}: /single and /batched at c{CONNECTIONS}", flush=True)
            rounds.append({path: bench.wrk(server.address, CONNECTIONS, TURN_SECONDS, path) for path in paths})
        calls, batches = metric_sum_and_count(server, "flask_stack_batch_size")
        waits, waited = metric_sum_and_count(server, "flask_stack_batch_wait_seconds")
        health = {}
        for path in paths:
            print(f"  /healthz while {path} saturates the CPUs", flush=True)
            load = threading.Thread(target=bench.wrk, args=(server.address, CONNECTIONS, HEALTH_SECONDS + 2, path))
            load.start()
            time.sleep(1)
            health[path] = bench.wrk(server.address, 4, HEALTH_SECONDS, "/healthz")
            load.join()
        return {"rounds": rounds, "mean_batch": calls / batches if batches else 0,
                "mean_wait_ms": waits / waited * 1000 if waited else 0, "health": health,
                "worker_timeouts": worker_timeouts(server)}


def native_threads(work: Path) -> dict:
    """The model's two routes at c64 with the stack's native thread counts (one per worker here)
    and with the libraries' own (one per CPU in every worker), side by side in turns."""
    cpus = str(usable_cpus())
    configs = [model_service("stack-threads", PRELOAD_APP="true"),
               model_service("library-threads", PRELOAD_APP="true",
                             **dict.fromkeys(("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"), cpus))]

    def turn(server: Server, connections: int) -> dict:
        return {path: bench.wrk(server.address, connections, TURN_SECONDS, path) for path in ("/single", "/batched")}

    return {"rounds": [turns[CONNECTIONS] for turns in bench.alternated_rounds(work, configs, (CONNECTIONS,), turn)],
            "cpus": cpus}


def recycling(work: Path) -> dict:
    """The model at c64 on /batched, steady and with workers replaced every MAX_REQUESTS (with and
    without PRELOAD_APP), side by side in turns."""
    configs = [model_service("steady", PRELOAD_APP="true"),
               model_service("recycled", PRELOAD_APP="true", MAX_REQUESTS=str(RECYCLE_MAX_REQUESTS)),
               model_service("recycled-no-preload", PRELOAD_APP="false", MAX_REQUESTS=str(RECYCLE_MAX_REQUESTS))]

    def turn(server: Server, connections: int) -> dict:
        return bench.wrk(server.address, connections, TURN_SECONDS, "/batched")

    logs = {}
    rounds = bench.alternated_rounds(work, configs, (CONNECTIONS,), turn_with_logs(turn, logs))
    replaced = {key: log.count("Autorestarting worker after current request") for key, log in logs.items()}
    return {"rounds": [turns[CONNECTIONS] for turns in rounds], "replaced": replaced}


def turn_with_logs(turn: Callable[[Server, int], dict], logs: dict) -> Callable[[Server, int], dict]:
    """`turn`, keeping each server's gunicorn log as it was after its last turn (by its config's key)."""
    def run(server: Server, connections: int) -> dict:
        result = turn(server, connections)
        key = server.work.name.split(".", 1)[0]
        logs[key] = (server.log_dir / "gunicorn/error.log").read_text()
        return result
    return run


def median(values) -> float:
    return statistics.median(list(values))


def spread(values: list[float]) -> str:
    return f"{median(values):.2f}× ({min(values):.2f}–{max(values):.2f})"


def verdict(met: bool, miss: str) -> str:
    return "yes" if met else f"**no, {miss}**"


def memory_row(memory_: dict) -> str:
    stack_idle = memory_["stack"]["idle_mb"]
    bound = MEMORY_BOUND * (MODEL_MB + stack_idle)
    preload, no_preload = memory_["preload-true"], memory_["preload-false"]
    worst = max(preload["idle_mb"], preload["after_mb"])
    return (f"| memory, {MEMORY_WORKERS} workers and the {MODEL_MB} MB model, `PRELOAD_APP=true`: ≤ {MEMORY_BOUND} × "
            f"(the model + the stack's idle {stack_idle} MB) = {bound:.0f} MB, also after {MEMORY_REQUESTS:,} "
            f"requests | {preload['idle_mb']} MB idle, {preload['after_mb']} MB after {preload['requests']:,} "
            f"requests ({worst / (MODEL_MB + stack_idle):.2f} ×); without preload {no_preload['idle_mb']} MB "
            f"and {no_preload['after_mb']} MB ({no_preload['idle_mb'] / (MODEL_MB + stack_idle):.2f} ×) "
            f"| {verdict(worst <= bound, f'by {worst - bound:.0f} MB')} |")


def batching_rows(batching_: dict) -> list[str]:
    rounds = batching_["rounds"]
    ratios = [turns["/batched"]["rps"] / turns["/single"]["rps"] for turns in rounds]
    single, batched_ = ({name: median(turns[path][name] for turns in rounds) for name in ("rps", "p99_ms")}
                        for path in ("/single", "/batched"))
    errors = sum(turns[path]["errors"] for turns in rounds for path in ("/single", "/batched"))
    met = median(ratios) >= BATCHING_RATIO and not errors and batched_["p99_ms"] <= single["p99_ms"]
    health = {path: result["p99_ms"] for path, result in batching_["health"].items()}
    timeouts = batching_["worker_timeouts"]
    health_met = max(health.values()) <= HEALTH_P99_MS and not timeouts
    return [
        f"| batching: `@batched` ≥ {BATCHING_RATIO:g} × the requests/s of one inference a request, "
        f"c{CONNECTIONS}, 0 errors, p99 no worse | {spread(ratios)} ({batched_['rps']:,.0f} against "
        f"{single['rps']:,.0f} requests/s, medians of {len(rounds)} alternated rounds); {errors} errors; p99 "
        f"{batched_['p99_ms']:.0f} ms against {single['p99_ms']:.0f} ms; {batching_['mean_batch']:.1f} calls a "
        f"batch, each waited {batching_['mean_wait_ms']:.1f} ms on average | {verdict(met, 'see the rounds')} |",
        f"| `/healthz` p99 ≤ {HEALTH_P99_MS} ms while the model saturates the CPUs; no WORKER TIMEOUT "
        f"| {health['/single']:.0f} ms under `/single`, {health['/batched']:.0f} ms under `/batched` "
        f"(`wrk -c4`, {HEALTH_SECONDS} s each); {timeouts} WORKER TIMEOUT "
        f"| {verdict(health_met, f'by {max(health.values()) - HEALTH_P99_MS:.0f} ms')} |",
    ]


def recycling_row(recycling_: dict) -> str:
    cycles, replaced = recycling_["rounds"], recycling_["replaced"]
    ratios = {key: [turns[key]["p99_ms"] / turns["steady"]["p99_ms"] for turns in cycles]
              for key in ("recycled", "recycled-no-preload")}
    p99 = {key: median(turns[key]["p99_ms"] for turns in cycles) for key in ("steady", "recycled")}
    errors = {key: sum(turns[key]["errors"] for turns in cycles) for key in ("recycled", "recycled-no-preload")}
    miss = median(ratios["recycled"]) - RECYCLING_P99_RATIO
    return (f"| recycling with `PRELOAD_APP=true` (`MAX_REQUESTS={RECYCLE_MAX_REQUESTS}`): p99 ≤ "
            f"{RECYCLING_P99_RATIO} × the steady p99 | {spread(ratios['recycled'])} (p99 {p99['recycled']:.0f} "
            f"against {p99['steady']:.0f} ms; {replaced['recycled']} workers replaced; {errors['recycled']} errors); "
            f"without preload {spread(ratios['recycled-no-preload'])} ({replaced['recycled-no-preload']} replaced; "
            f"{errors['recycled-no-preload']} errors) | {verdict(miss <= 0, f'by {miss:.2f} ×')} |")


def threads_row(threads: dict) -> str:
    rounds = threads["rounds"]
    cells = []
    for path in ("/single", "/batched"):
        ratios = [turns["library-threads"][path]["rps"] / turns["stack-threads"][path]["rps"] for turns in rounds]
        p99 = {key: median(turns[key][path]["p99_ms"] for turns in rounds)
               for key in ("stack-threads", "library-threads")}
        cells.append(f"`{path}`: {spread(ratios)} the requests/s, p99 {p99['library-threads']:.0f} against "
                     f"{p99['stack-threads']:.0f} ms")
    return (f"| native threads: the libraries' own count ({threads['cpus']} a worker) against the stack's "
            f"(usable CPUs ÷ workers) | " + "; ".join(cells) + " | (no target) |")


def write(results: dict, machine: dict) -> str:
    memory_, batching_, recycling_ = results["memory"], results["batching"], results["recycling"]
    default_idle = memory_["default"]["idle_mb"]
    rounds = zip(batching_["rounds"], recycling_["rounds"], strict=True)
    return "\n".join([
        "# Serving a model: the benchmark",
        "",
        f"`bench/.venv/bin/python -m bench.models`, {machine['date']}, {machine['cpu']}, {machine['cores']} "
        f"cores: `{bench.IMAGE}` and `{MODEL_IMAGE}` (bench/model-image: a {MODEL_MB} MB numpy array built at "
        f"import; an inference is a matrix-vector product over 96 MB of it), each container at its own "
        f"address, `wrk -t2 -c{CONNECTIONS}` through nginx; memory as `docker stats` counts it.",
        "",
        "| target | measured | met |",
        "|---|---|---|",
        memory_row(memory_),
        *batching_rows(batching_),
        threads_row(results["threads"]),
        recycling_row(recycling_),
        f"| the default image (no model) idle ≤ {IDLE_BOUND_MB} MB | {default_idle} MB "
        f"| {verdict(default_idle <= IDLE_BOUND_MB, f'by {default_idle - IDLE_BOUND_MB} MB')} |",
        "",
        "Each round (requests/s, p99):",
        "",
        "| round | /single | /batched | steady | recycled | recycled, no preload |",
        "|---:|---|---|---|---|---|",
        *(f"| {number} | " + " | ".join(f"{turn['rps']:,}, {turn['p99_ms']:.0f} ms" for turn in
                                       (turns["/single"], turns["/batched"], cycle["steady"], cycle["recycled"],
                                        cycle["recycled-no-preload"])) + " |"
          for number, (turns, cycle) in enumerate(rounds, start=1)),
        "",
    ])


def main() -> None:
    # SIGTERM (a `timeout`, a kill) unwinds like Ctrl-C, so every container started is removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    bench.wait_for_quiet_machine()
    machine = report.machine()
    print(f"building {MODEL_IMAGE} FROM {bench.IMAGE}", flush=True)
    build_model_image()
    work = Path(tempfile.mkdtemp(prefix="flask-stack-models."))
    work.chmod(0o755)
    try:
        print("memory", flush=True)
        results = {"memory": memory(work)}
        print("batching", flush=True)
        results["batching"] = batching(work)
        print("native threads", flush=True)
        results["threads"] = native_threads(work)
        print("recycling", flush=True)
        results["recycling"] = recycling(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        subprocess.run(["docker", "network", "rm", bench.BRIDGE], capture_output=True)
    text = write(results, machine)
    (bench.BENCH / "results" / "models.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
