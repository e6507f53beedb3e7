"""What each part of the stack costs on the fast path, beside the uwsgi peer.

The native stack, then the same with one more part taken away at a time, down to gunicorn's
own gevent worker serving the app behind an nginx set up like the peer's. They run side by
side and take turns, as bench.py's alternated rounds do (this machine's speed drifts more
than some of the steps): each round gives each of them 5 s of `wrk -c64` on `GET /`.
For each: requests/s against uwsgi's in the same round, p99, and the CPU its programs spent
per request (the server's Python processes, and nginx), the medians of the rounds.

    bench/.venv/bin/python -m bench.costs     # after bench/run has made bench/.venv; about 5 minutes

It writes bench/results/costs.md. Native only: the container's own cost is bench.py's.
"""

import resource
import shutil
import signal
import statistics
import sys
import tempfile
from pathlib import Path

import psutil

from bench import bench, report
from bench.bench import Config, Server, stack_native

CONNECTIONS = 64
NO_ACCESS_LOG = "--logger-class=bench.no_access_log.NoAccessLog"


def plain_gunicorn(server: Server, port: int) -> None:
    """gunicorn's gevent worker serving the app, behind bench/nginx-gunicorn.conf (like the peer's nginx)."""
    bench.render("nginx-temp.conf", server.work, port)
    server.spawn("gunicorn", [bench.BIN / "gunicorn", "--worker-class=gevent",
                              f"--workers={bench.STACK.web_concurrency}",
                              f"--worker-connections={bench.STACK.worker_connections}",
                              f"--bind=unix:{server.work}/gunicorn.sock", "app:create_app()"],
                 cwd=bench.ROOT, env=bench.app_env(server))
    conf = bench.render("nginx-gunicorn.conf", server.work, port)
    server.spawn("nginx", ["nginx", "-c", conf, "-e", server.work / "nginx-gunicorn-error.log"])


# Each step takes one more part away from the one before.
STEPS = [
    Config("uwsgi", "the peer: nginx → uwsgi × 16, cheaper 2", bench.uwsgi_nginx),
    Config("stack", "the stack, native (as bench.py's `stack`)", stack_native()),
    Config("no-metrics", "− request metrics (METRICS_PORT=0)", stack_native(METRICS_PORT="0")),
    Config("no-access-log", "− gunicorn's access line (a logger_class that writes none)",
           stack_native(NO_ACCESS_LOG, METRICS_PORT="0")),
    Config("gunicorn-worker", "− the stack's worker and middlewares: gunicorn's gevent worker, the app alone",
           stack_native(NO_ACCESS_LOG, "--worker-class=gevent", "app:create_app()", METRICS_PORT="0")),
    Config("plain-nginx", "− the stack's nginx: one worker, no forwarded headers, maps or checks",
           plain_gunicorn),
]


def cpu_seconds(server: Server) -> dict[str, float]:
    """The CPU time of the server's programs so far: nginx's, and the rest (gunicorn or uwsgi);
    processes that have ended count in their parent's children times."""
    spent = {"nginx": 0.0, "server": 0.0}
    for process in bench.processes_of(server):
        try:
            times, name = process.cpu_times(), process.name()
        except psutil.NoSuchProcess:
            continue
        spent["nginx" if name.startswith("nginx") else "server"] += (
            times.user + times.system + times.children_user + times.children_system)
    return spent


def turn_with_cpu(server: Server, connections: int) -> dict:
    """bench.py's turn, and the CPU the server's programs spent a request during it."""
    before = cpu_seconds(server)
    result = bench.round_turn(server, connections)
    after = cpu_seconds(server)
    requests = max(1, result["rps"] * bench.ROUND_SECONDS)
    return {**result, **{f"{program}_us": (after[program] - before[program]) / requests * 1e6
                         for program in ("server", "nginx")}}


def measure(work: Path) -> dict[str, list[dict]]:
    """Each step's turns, round after round."""
    rounds = bench.alternated_rounds(work, STEPS, (CONNECTIONS,), turn_with_cpu)
    return {step.key: [turns[CONNECTIONS][step.key] for turns in rounds] for step in STEPS}


def table(turns: dict[str, list[dict]]) -> str:
    peer = turns["uwsgi"]
    lines = ["| configuration | requests/s | ÷ uwsgi's in the same round, median (range) | p99 "
             "| server µs a request | nginx µs |",
             "|---|---:|---:|---:|---:|---:|"]
    for step in STEPS:
        rounds = turns[step.key]
        ratios = [mine["rps"] / theirs["rps"] for mine, theirs in zip(rounds, peer, strict=True)]
        median = {name: statistics.median(turn[name] for turn in rounds)
                  for name in ("rps", "p99_ms", "server_us", "nginx_us")}
        errors = sum(turn["errors"] for turn in rounds)
        ratio = "" if step.key == "uwsgi" else f"{statistics.median(ratios):.2f}× ({min(ratios):.2f}–{max(ratios):.2f})"
        lines.append(f"| `{step.key}`: {step.label} | {median['rps']:,.0f} | {ratio} | {median['p99_ms']:.0f} ms"
                     f"{f', {errors} errors' if errors else ''} | {median['server_us']:.0f} | "
                     f"{median['nginx_us']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    # SIGTERM (a `timeout`, a kill) unwinds like Ctrl-C, so every server started is stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    bench.wait_for_quiet_machine()
    machine = report.machine()
    work = Path(tempfile.mkdtemp(prefix="flask-stack-costs."))
    work.chmod(0o755)  # nginx's workers (nobody, when run as root) reach the sockets inside
    try:
        turns = measure(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    settings = ", ".join(f"`{name}={value}`" for name, value in bench.BENCH_ENV.items())
    text = (f"# What each part of the stack costs on the fast path\n\n"
            f"`bench/.venv/bin/python -m bench.costs`, {machine['date']}, {machine['cpu']}, "
            f"{machine['cores']} cores, Python {machine['python']}: `wrk -t2 -c{CONNECTIONS}` on `GET /`, "
            f"{bench.ROUNDS} rounds of {bench.ROUND_SECONDS} s each, taking turns; every row is the row above "
            f"with one part less (bench/costs.py); the stack with {settings}, as in bench.py.\n\n{table(turns)}\n")
    (bench.BENCH / "results" / "costs.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
