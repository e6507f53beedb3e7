"""The benchmark's output: results.json, results.md (tables and targets) and chart.png."""

import datetime
import json
import os
import platform
import statistics
import subprocess
import sysconfig
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="minutes"), "cpu": cpu,
            "cores": os.cpu_count(), "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9),
            "kernel": platform.release(), "nginx": nginx.split("/")[-1],
            "python": f"{platform.python_version()} ({sysconfig.get_config_var('BINDIR')})"}


def ms(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


def fast_row(result: dict) -> str:
    cells = []
    for run in result["fast"].values():
        cells += [f"{run['rps']:,}", f"{ms(run['p50_ms'])} / {ms(run['p99_ms'])}", f"{run['errors']:,}"]
    cores = "/".join(f"{run['client_cores']:.1f}" for run in result["fast"].values())
    return f"| {result['label']} | " + " | ".join(cells) + f" | {cores} |"


def burst_cell(run: dict, deadline: float) -> str:
    if run["unfinished"]:
        text = f"{run['ok']:,} ok in {deadline:g} s ({run['rps']:g}/s), {run['unfinished']:,} unfinished"
    else:
        text = f"{run['ok']:,} ok, wall {run['wall_s']:.2f} s, p99 {ms(run['p99_ms'])}"
    return text + (f", **{run['errors']:,} errors**" if run["errors"] else "")


def ratios(results: dict, connections: str, key: str, base: str) -> tuple[float, int, Callable]:
    """`key`'s fast-path req/s over `base`'s at `connections`: the median of the alternated
    rounds' ratios where both took part in them, else the ratio of their single runs; `key`'s
    errors; and how to write it (given how to write one ratio)."""
    rounds = [one[connections] for one in results.get("rounds", [])
              if key in one[connections] and base in one[connections]]
    single = [tuple(results["configs"][name]["fast"][connections] for name in (key, base))]
    pairs = [(one[key], one[base]) for one in rounds] or single
    values = sorted(run["rps"] / peer["rps"] for run, peer in pairs)
    median, errors = statistics.median(values), sum(run["errors"] for run, _ in pairs)

    def measured(write: Callable[[float], str]) -> str:
        if not rounds:
            run, peer = pairs[0]
            return f"{write(median)} ({run['rps']:,} req/s against {peer['rps']:,})"
        return (f"{write(median)}, the median of {len(values)} alternated rounds "
                f"({write(values[0])} to {write(values[-1])})")
    return median, errors, measured


def targets(results: dict) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for each target of the issues this run can judge."""
    configs, rows = results["configs"], []
    get = configs.get
    stack, uwsgi, floor = get("stack"), get("uwsgi"), get("floor")
    served_keys = [key for key in ("stack", "container-direct", "container") if get(key)]
    served = [configs[key] for key in served_keys]
    if uwsgi:
        for key in served_keys:
            if configs[key]["fast"]:
                ratio, errors, measured = ratios(results, "64", key, "uwsgi")
                rows.append((f"{configs[key]['label']}, fast path c64: ≥ 0.6 × uwsgi's req/s, 0 errors",
                             f"{measured(lambda r: f'{r:.2f} ×')}; {errors} errors", ratio >= 0.6 and errors == 0))
    for config in served:
        for connections, bound in (("64", 50), ("256", 150)):
            if connections in config["fast"]:
                run = config["fast"][connections]
                rows.append((f"{config['label']}, fast path c{connections}: p99 ≤ {bound} ms, 0 errors",
                             f"p99 {ms(run['p99_ms'])}, {run['errors']} errors",
                             run["p99_ms"] <= bound and run["errors"] == 0))
    for config in served:
        for method, run in config.get("recycle", {}).items():
            rows.append((f"{config['label']}, {method} c256 while workers are recycled (MAX_REQUESTS="
                         f"{results['settings']['recycle_max_requests']}) and reloaded: p99 ≤ 150 ms, 0 errors",
                         f"{run['workers_replaced']} workers replaced, 1 reload; p99 {ms(run['p99_ms'])}, "
                         f"{run['errors']} errors", run["p99_ms"] <= 150 and run["errors"] == 0))
    if uwsgi and "mixed" in uwsgi:
        for config in served:
            if "mixed" in config:
                run, peer = config["mixed"], uwsgi["mixed"]
                rows.append((f"{config['label']}, mixed traffic: ≥ 5 × uwsgi's successful req/s, 0 errors, "
                             "p99 of the fast requests ≤ 250 ms",
                             f"{run['rps']:,} req/s = {run['rps'] / max(1, peer['rps']):.1f} × uwsgi {peer['rps']:,}; "
                             f"{run['errors']} errors; fast p99 {ms(run['fast_p99_ms'])}",
                             run["rps"] >= 5 * peer["rps"] and run["errors"] == 0
                             and run["fast_p99_ms"] is not None and run["fast_p99_ms"] <= 250))
    container = get("container")
    if container and floor:
        for count in ("1000", "2000"):
            run, ratio = container["slow"][count], container["slow"][count]["wall_s"] / floor["slow"][count]["wall_s"]
            rows.append((f"container, {count} one-second requests at once: 0 errors, wall ≤ 1.1 × floor",
                         f"{run['errors'] + run['unfinished']} failed; {run['wall_s']:.2f} s = {ratio:.2f} × "
                         f"floor {floor['slow'][count]['wall_s']:.2f} s",
                         run["errors"] + run["unfinished"] == 0 and ratio <= 1.1))
    if get("container-direct") and stack:
        for connections in get("container-direct")["fast"]:
            ratio, _, measured = ratios(results, connections, "container-direct", "stack")
            rows.append((f"container at its own address (no proxy) ≥ 95% of native, fast path c{connections}",
                         measured(lambda r: f"{r:.1%}"), ratio >= 0.95))
    if container and stack:
        for connections, run in container["fast"].items():
            ratio = run["rps"] / stack["fast"][connections]["rps"]
            rows.append((f"container through the published port, fast path c{connections}: what the proxy costs",
                         f"{ratio:.1%} of native; Docker's userland proxy used {run.get('docker_proxy_cores', 0):.2f} "
                         f"of the {results['machine']['cores']} cores", True))
    if get("stack-bare") and get("stack-json") and stack:
        for connections in ("64", "256"):
            ratio, _, measured = ratios(results, connections, "stack-json", "stack-bare")
            metrics_only = ratios(results, connections, "stack", "stack-bare")[2]
            rows.append((f"fast path c{connections} with JSON logs and metrics on: within 10% of neither",
                         measured(lambda r: f"{r:.1%}") + "; metrics alone, text logs: "
                         + metrics_only(lambda r: f"{r:.1%}"), ratio >= 0.9))
    if "container" in results:
        facts = results["container"]
        rows += [
            ("container idle memory ≤ 100 MB (`ROLE=all`)", f"{facts['cgroup_mb']} MB as Docker counts it "
             f"(`docker stats`): its processes' own {facts['cgroup_split_mb']['anon']} MB and "
             f"{facts['cgroup_split_mb']['file']} MB of page cache charged to it", facts["cgroup_mb"] <= 100),
            ("image ≤ 150 MB", f"{facts['image_mb']} MB (base image {facts['base_mb']} MB)", facts["image_mb"] <= 150),
        ]
        if container and "after_load_cgroup_mb" in container:
            rows.append(("container memory after the mixed traffic ≤ 150 MB",
                         f"{container['after_load_cgroup_mb']} MB", container["after_load_cgroup_mb"] <= 150))
    return rows


def peak_runs(result: dict) -> list[dict]:
    return [*result["fast"].values(), *result["slow"].values(), *([result["mixed"]] if "mixed" in result else [])]


def mixed_row(result: dict) -> str:
    run = result["mixed"]
    kinds = ("fast", "io_50ms", "io_1s")
    return (f"| {result['label']} | {run['rps']:,} | {run['errors']:,} | "
            + " | ".join(f"{ms(run[f'{kind}_p50_ms'])} / {ms(run[f'{kind}_p99_ms'])}" for kind in kinds)
            + f" | {run['client_cores']:.1f} |")


def recycle_rows(result: dict) -> list[str]:
    return [f"| {result['label']} | {method} | {run['rps']:,} | {ms(run['p50_ms'])} / {ms(run['p99_ms'])} "
            f"| {run['errors']:,} | {run['workers_replaced']} |" for method, run in result.get("recycle", {}).items()]


def markdown(results: dict) -> str:
    m, s, configs = results["machine"], results["settings"], results["configs"].values()
    load = lambda key: " ".join(f"{value:.2f}" for value in results[key])  # noqa: E731
    lines = [
        f"Measured {m['date']} with `bench/run` on {m['cores']} × {m['cpu']}, {m['memory_gb']} GB, Linux "
        f"{m['kernel']}, nginx {m['nginx']}, Python {m['python']}; load average (1, 5, 15 min) before "
        f"{load('load_before')}, after {load('load_after')}. gunicorn gevent: {s['web_concurrency']} workers × "
        f"{s['worker_connections']} connections (the stack's defaults on this machine).",
        "",
        f"**Fast path**: `wrk -t2 -cN -d{s['fast_seconds']:g}s --timeout 10s` on `GET /` "
        "(the example's index, a small JSON answer). wrk runs on the "
        "same cores: its column is the CPU cores wrk itself used (of "
        f"{m['cores']}); where it is near {m['cores'] / 2:g} or more, the client limits the figure.",
        "",
        "| configuration | req/s c64 | p50 / p99 c64 | errors c64 | req/s c256 | p50 / p99 c256 | errors c256 "
        "| wrk's cores |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *(fast_row(result) for result in configs if result["fast"]),
        "",
        f"**Mixed traffic**: {s['mixed_connections']} kept-alive connections for {s['mixed_seconds']:g} s, each "
        f"request picked at random: 80% `GET /compute?n={s['compute_n']}` (1 ms of Python on this machine, timed "
        "by the benchmark), 15% a 50 ms wait (`/job1?seconds=0.05`), "
        "5% a 1 s wait. Successful requests a second, errors, and p50 / p99 of each kind. The client is "
        "Python asyncio on the same cores (its cores in the last column).",
        "",
        "| configuration | req/s | errors | fast p50 / p99 | 50 ms p50 / p99 | 1 s p50 / p99 | client's cores |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *(mixed_row(result) for result in configs if "mixed" in result),
        "",
        f"**Slow I/O**: C × `GET /job1?seconds=1` at once, each on its own connection, bounded at "
        f"{s['slow_deadline_s']:g} s (a fresh start of the server for each C). Ideal: wall 1.0 s, C requests/s.",
        "",
        "| configuration | " + " | ".join(f"C = {count}" for count in ("100", "1000", "2000")) + " |",
        "|---|---|---|---|",
        *(f"| {result['label']} | " + " | ".join(burst_cell(run, s["slow_deadline_s"])
                                               for run in result["slow"].values()) + " |"
          for result in configs if result["slow"]),
        "",
        "**Footprint**: memory of every process of the configuration (RSS sums shared pages once per "
        "process; PSS shares them out).",
        "",
        "| configuration | start to first answer | idle RSS (PSS) | peak RSS under load |",
        "|---|---:|---:|---:|",
        *(f"| {result['label']} | {result['ready_s']:.1f} s | {result['idle']['rss_mb']:.0f} MB "
          f"({result['idle']['pss_mb']:.0f} MB) | "
          f"{max(run['peak_rss_mb'] for run in peak_runs(result)):.0f} MB |"
          for result in configs),
    ]
    if any("recycle" in result for result in configs):
        lines += ["", f"**Recycling and reload**: the stack with `MAX_REQUESTS={s['recycle_max_requests']}` "
                  "(a worker replaced every few seconds) and a `reload app` at 10 s, under `wrk -c256 -d20s`: "
                  "`GET /`, then `POST /compute` with a JSON body.", "",
                  "| configuration | method | req/s | p50 / p99 | errors | workers replaced |",
                  "|---|---|---:|---:|---:|---:|",
                  *(row for result in configs for row in recycle_rows(result))]
    if results.get("rounds"):
        rounds, labels = results["rounds"], {key: result["label"] for key, result in results["configs"].items()}
        lines += ["", f"**Alternated rounds**: the configurations that the ratio targets compare, side by side, "
                  f"each given {s['round_seconds']:g} s of the fast path in turn, round after round "
                  "(req/s of each round; the targets take the median of the rounds' ratios).", "",
                  "| configuration | " + " | ".join(f"req/s c{connections}" for connections in rounds[0]) + " |",
                  "|---|" + "---:|" * len(rounds[0]),
                  *(f"| {labels.get(key, key)} | " + " | ".join(" / ".join(f"{one[connections][key]['rps']:,}"
                                                                          for one in rounds)
                                                              for connections in rounds[0]) + " |"
                    for key in rounds[0][next(iter(rounds[0]))])]
    if "container" in results:
        facts = results["container"]
        lines += ["", f"Image `{facts['image']}`: {facts['image_mb']} MB, of which the base image "
                  f"{facts['base_mb']} MB. `docker run` to first answer {facts['ready_s']:.1f} s, to Docker's "
                  f"`healthy` {facts['healthy_s']:.1f} s. Layers of a megabyte or more, newest first: "
                  + ", ".join(facts["layers"]) + ". Idle memory by program (PSS): "
                  + ", ".join(f"{name} {mb} MB" for name, mb in facts["programs_pss_mb"].items()) + "."]
    lines += ["", "**Targets**", "", "| target | measured | met |", "|---|---|---|",
              *(f"| {target} | {measured} | {'yes' if met else '**no**'} |"
                for target, measured, met in targets(results))]
    return "\n".join(lines) + "\n"


def bars(axis, keys: list[str], series: dict[str, list], title: str, scale: str) -> None:
    """One panel: for each configuration in `keys`, a group of bars, one per series."""
    width = 0.8 / max(1, len(series))
    for index, (label, values) in enumerate(series.items()):
        axis.bar([i + index * width for i in range(len(keys))], values, width, label=label)
    axis.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(keys))], keys, rotation=30)
    axis.set_yscale(scale)
    axis.set_title(title)
    axis.legend()


def chart(results: dict, path: Path) -> None:
    configs = results["configs"]
    deadline = results["settings"]["slow_deadline_s"]
    figure, axes = plt.subplots(3, 2, figsize=(15, 15))
    panels = [
        (axes[0][0], "fast", "rps", "fast path GET /: requests/s (log)", "log"),
        (axes[0][1], "fast", "p99_ms", "fast path: p99 latency (ms)", "log"),
        (axes[1][0], "slow", "rps", "slow I/O bursts: completed requests/s", "linear"),
        (axes[1][1], "slow", "p99_ms", f"slow I/O bursts: p99 latency (ms; {deadline:g} s = did not finish)", "log"),
    ]
    for axis, workload, metric, title, scale in panels:
        keys = [key for key, result in configs.items() if result[workload]]
        names = list(next(iter(configs[key][workload] for key in keys)).keys()) if keys else []
        prefix = "c" if workload == "fast" else "C = "
        series = {f"{prefix}{name}": [deadline * 1000 if value is None else value
                                      for value in (configs[key][workload][name][metric] for key in keys)]
                  for name in names}
        bars(axis, keys, series, title, scale)
    mixed_keys = [key for key, result in configs.items() if result.get("mixed")]
    panels = [(axes[2][0], {"rps": "successful"}, "mixed traffic: successful requests/s (log)"),
              (axes[2][1], {"fast_p50_ms": "p50", "fast_p99_ms": "p99"},
               "mixed traffic: latency of the fast requests (ms, log)")]
    for axis, metrics, title in panels:
        series = {label: [configs[key]["mixed"][metric] or 0 for key in mixed_keys]
                  for metric, label in metrics.items()}
        bars(axis, mixed_keys, series, title, "log")
    figure.suptitle(f"flask-stack benchmark, {results['machine']['date']}, {results['machine']['cores']} cores")
    figure.tight_layout()
    figure.savefig(path, dpi=80)


def write(results: dict, folder: Path) -> None:
    folder.mkdir(exist_ok=True)
    # JSON keys are strings: convert once so that a fresh run and a reloaded file read the same.
    results = json.loads(json.dumps(results))
    (folder / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (folder / "results.md").write_text(markdown(results))
    chart(results, folder / "chart.png")
    print(f"results in {folder}/: results.md, results.json, chart.png")
