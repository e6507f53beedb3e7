"""The Kubernetes manifests (deploy/k8s/), checked without a cluster: valid for every
Kubernetes version from 1.27 that kubernetes-validate knows (strict: no unknown field), and in
agreement with the image: the variables it reads and their values, its health paths and ports,
how long it takes to drain and stop, its user, and the folders it writes under a read-only root."""

import base64
import copy
import functools
import importlib.resources
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

from app import config as example_config
from deploy.health import PATHS
from deploy.jobs.registry import registry
from deploy.jobs.ticks import Cron
from deploy.settings import VARIABLES, Settings
from tests.support import ROOT

MANIFESTS = ROOT / "deploy" / "k8s"
DOCKERFILE = (ROOT / "Dockerfile").read_text()
ROLES = ("web", "worker")  # each Deployment is named after the ROLE it runs
# The oldest Kubernetes the manifests are for: the budgets' unhealthyPodEvictionPolicy and the
# spread's matchLabelKeys are on by default from 1.27 (an older API server drops or refuses them).
OLDEST_KUBERNETES = (1, 27)
# Seconds the grace period must leave beyond the longest stop the image's own timeouts allow.
GRACE_MARGIN = 5
# The safe sysctl that lets a process that is not root bind a port below 1024 (nginx's 80).
UNPRIVILEGED_PORT_START = "net.ipv4.ip_unprivileged_port_start"
QUANTITY_UNITS = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30}


# --- The manifests ----------------------------------------------------------------------

def manifest_files() -> list[Path]:
    files = sorted(MANIFESTS.glob("*.yaml"))
    assert files, f"no manifests in {MANIFESTS}"
    return files


@functools.cache
def resources() -> tuple[dict, ...]:
    return tuple(document for path in manifest_files() for document in yaml.safe_load_all(path.read_text())
                 if document)


def of_kind(kind: str) -> list[dict]:
    return [resource for resource in resources() if resource["kind"] == kind]


def find(kind: str, name: str) -> dict:
    found = [resource for resource in of_kind(kind) if resource["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind} named {name} in deploy/k8s/, not 1"
    return found[0]


def pod_template(workload: dict) -> dict:
    """The pod template of a Deployment, or of a CronJob's Jobs."""
    spec = workload["spec"]
    return (spec["jobTemplate"]["spec"] if workload["kind"] == "CronJob" else spec)["template"]


def pod(workload: dict) -> dict:
    return pod_template(workload)["spec"]


def pod_labels(workload: dict) -> dict:
    return pod_template(workload)["metadata"]["labels"]


def container(deployment: dict) -> dict:
    """The Deployment's one container: the image runs everything under its supervisord."""
    assert "initContainers" not in pod(deployment)
    containers = pod(deployment)["containers"]
    assert len(containers) == 1, [each["name"] for each in containers]
    return containers[0]


def container_ports(deployment: dict) -> dict[str, int]:
    return {port["name"]: port["containerPort"] for port in container(deployment)["ports"]}


def port_number(deployment: dict, port: int | str) -> int:
    """A probe's or a Service's target port, given by number or by the container port's name."""
    ports = container_ports(deployment)
    number = ports.get(port, port)
    assert number in ports.values(), f"port {port!r} is not a container port of {deployment['metadata']['name']}"
    return number


def environment(deployment: dict) -> dict[str, str]:
    """The container's variables as the kubelet sets them: its ConfigMaps (envFrom), then env."""
    variables = {}
    for source in container(deployment).get("envFrom", []):
        assert set(source) == {"configMapRef"}, f"{source}: the shared settings come from a ConfigMap, unprefixed"
        variables.update(find("ConfigMap", source["configMapRef"]["name"])["data"])
    for variable in container(deployment).get("env", []):
        # A secret is given as a file (NAME_FILE): it stays out of `kubectl describe` and /proc.
        assert "value" in variable, f"{variable['name']}: a literal value, or a secret as a file"
        variables[variable["name"]] = variable["value"]
    return variables


def mounted_file(deployment: dict, path: str) -> str:
    """The content of the file at `path` in the container: a key of the Secret mounted above it."""
    volumes = {volume["name"]: volume for volume in pod(deployment)["volumes"]}
    for mount in container(deployment)["volumeMounts"]:
        folder = mount["mountPath"].rstrip("/") + "/"
        if not path.startswith(folder):
            continue
        source = volumes[mount["name"]].get("secret")
        assert source, f"{path} is on the volume {mount['name']!r}, which is not a Secret"
        key = path.removeprefix(folder)
        if "items" in source:
            keys = {item["path"]: item["key"] for item in source["items"]}
            assert key in keys, f"{path}: the volume {mount['name']!r} does not project {key!r}"
            key = keys[key]
        secret = find("Secret", source["secretName"])
        if key in secret.get("stringData", {}):
            return secret["stringData"][key]
        assert key in secret.get("data", {}), f"{path}: the Secret {source['secretName']!r} has no key {key!r}"
        return base64.b64decode(secret["data"][key]).decode()
    pytest.fail(f"{path}: no volume is mounted above it")


def image_folders() -> dict[str, str]:
    """STACK_LOG_DIR, STACK_RUN_DIR and STACK_DATA_DIR, as the Dockerfile sets them."""
    folders = dict(re.findall(r"(STACK_\w+_DIR)=(/[\w/-]+)", DOCKERFILE))
    assert len(folders) == 3, folders
    return folders


def image_user() -> int:
    return int(re.search(r"useradd [^;]*--uid (\d+)", DOCKERFILE)[1])


def settings_of(deployment: dict, folder: Path) -> Settings:
    """The stack's settings in the container, read by its own parsers from the container's
    variables and the image's folders; a secret given as a file is read from its Secret."""
    variables = environment(deployment)
    for name, path in list(variables.items()):
        if name.endswith("_FILE"):
            copied = folder / f"{deployment['metadata']['name']}-{name}"
            copied.write_text(mounted_file(deployment, path))
            variables[name] = str(copied)
    return Settings.from_env({**image_folders(), **variables})


def longest_stop(settings: Settings) -> int:
    """Seconds the image may take from SIGTERM to its exit. supervisord stops its programs
    one after another (supervisord.conf): the drain (web) for DRAIN_SECONDS, then each
    program it runs within GRACEFUL_TIMEOUT: the consumer (worker), nginx then gunicorn (web)."""
    programs = {"web": 2, "worker": 1, "all": 3}[settings.role]
    drain = settings.drain_seconds if settings.role in ("web", "all") else 0
    return drain + programs * settings.graceful_timeout


def quantity(value: str | int) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([a-zA-Z]*)", str(value))
    assert match and match[2] in QUANTITY_UNITS, f"{value!r}: not a quantity these tests read"
    return float(match[1]) * QUANTITY_UNITS[match[2]]


def selects(selector: dict, labels: dict) -> bool:
    assert set(selector) == {"matchLabels"}, "selectors by labels only"
    return selector["matchLabels"].items() <= labels.items()


# --- Valid for Kubernetes ---------------------------------------------------------------

def version_key(version: str) -> tuple[int, ...]:
    return tuple(map(int, version.split(".")))


def kubernetes_versions() -> list[str]:
    """The Kubernetes versions kubernetes-validate ships strict schemas for, oldest first."""
    schemas = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    versions = [match[1] for entry in schemas.iterdir()
                if (match := re.fullmatch(r"v(\d+\.\d+\.\d+)-local-strict", entry.name))]
    return sorted(versions, key=version_key)


def validation_problems(files: list[Path], versions: list[str]) -> list[str]:
    """What `kubernetes-validate --strict` finds in `files` for each version. A resource
    whose schema it does not have is only a warning to it, and exit status 0: here every
    resource must pass for every version."""
    beside_python = Path(sys.executable).parent / "kubernetes-validate"
    tool = str(beside_python) if beside_python.exists() else shutil.which("kubernetes-validate")
    assert tool, "kubernetes-validate is not installed: pip install -r requirements-dev.txt"
    options = [option for version in versions for option in ("--kubernetes-version", version)]
    result = subprocess.run([tool, "--strict", *options, *map(str, files)],
                            capture_output=True, text=True, timeout=120)
    problems = [line for line in result.stdout.splitlines() if not line.startswith("INFO ")]
    problems += result.stderr.splitlines()
    if result.returncode != 0:
        problems.append(f"kubernetes-validate exited with status {result.returncode}")
    passed = set(re.findall(r"^INFO (\S+) passed for resource (\S+) against version (\S+)$", result.stdout, re.M))
    for path in files:
        for resource in yaml.safe_load_all(path.read_text()):
            if not resource:
                continue
            name = f"{resource['kind'].lower()}/{resource['metadata']['name']}"
            for version in versions:
                minor = version.rsplit(".", 1)[0]
                if (str(path), name, minor) not in passed:
                    problems.append(f"{path.name}: {name} did not pass for Kubernetes {minor}")
    return problems


def test_the_manifests_are_valid_for_every_kubernetes_version_known_from_the_oldest_supported():
    known = kubernetes_versions()
    versions = [version for version in known if version_key(version)[:2] >= OLDEST_KUBERNETES]
    assert len(versions) >= 3, f"kubernetes-validate knows {known}: at least the three newest minor versions are needed"
    assert validation_problems(manifest_files(), versions) == []


def test_the_validation_finds_an_unknown_field_a_wrong_type_and_a_removed_api(tmp_path):
    newest = kubernetes_versions()[-1:]
    misspelt = copy.deepcopy(find("Deployment", "web"))
    misspelt["spec"]["replica"] = misspelt["spec"].pop("replicas")
    wrong_type = copy.deepcopy(find("Deployment", "worker"))
    wrong_type["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "18"
    removed = copy.deepcopy(find("PodDisruptionBudget", "web"))
    removed["apiVersion"] = "policy/v1beta1"  # gone since Kubernetes 1.25
    for name, resource in {"misspelt": misspelt, "wrong-type": wrong_type, "removed": removed}.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(resource))
        assert validation_problems([path], newest), f"{name}: no problem found"


def test_every_resource_is_labelled_and_leaves_the_namespace_to_kubectl():
    for resource in resources():
        assert resource["metadata"]["labels"]["app.kubernetes.io/name"] == "flask-stack", resource["metadata"]
        assert "namespace" not in resource["metadata"]  # `kubectl apply -n NAMESPACE -f deploy/k8s/` chooses it


# --- The image's variables --------------------------------------------------------------

@pytest.mark.parametrize("role", ROLES)
def test_every_variable_is_one_the_image_or_the_example_app_reads(role):
    stack = {variable.name for variable in VARIABLES}
    as_files = {f"{variable.name}_FILE" for variable in VARIABLES if variable.secret}
    example = set(example_config.from_env({}))  # app/config.py: JOB_MAX_SECONDS, SECRET_KEY, APP_VERSION
    deployment = find("Deployment", role)
    names = set(environment(deployment))
    assert names - stack - as_files - example == set()
    assert names & set(image_folders()) == set()  # the image's own, not for changing at run time
    # Nor a variable for each Service of the namespace: one named `metrics` would set METRICS_PORT.
    assert pod(deployment)["enableServiceLinks"] is False


@pytest.mark.parametrize("role", ROLES)
def test_every_value_parses_with_the_image_s_own_parsers(role, tmp_path):
    deployment = find("Deployment", role)
    settings = settings_of(deployment, tmp_path)
    example_config.from_env(environment(deployment))  # the example's own variables, by its parsers
    assert settings.role == role
    assert settings.log_target in ("stdout", "both")  # `kubectl logs` shows every log
    assert settings.log_format == "json"


def test_web_and_worker_share_one_job_queue_and_one_image(tmp_path):
    web, worker = (settings_of(find("Deployment", role), tmp_path) for role in ROLES)
    # Without Redis each pod would have a SQLite queue of its own: the worker would never
    # see a job the web queued.
    assert web.redis_url and web.redis_url == worker.redis_url
    assert container(find("Deployment", "web"))["image"] == container(find("Deployment", "worker"))["image"]


def test_web_drains_believes_its_ingress_and_names_its_hosts(tmp_path):
    settings = settings_of(find("Deployment", "web"), tmp_path)
    assert settings.drain_seconds > 0  # the endpoints and the ingress let the pod go while it still serves
    assert settings.trusted_proxies != ()  # clients keep their address behind the ingress
    assert find("Service", "web")["metadata"]["name"] in settings.allowed_hosts  # clients in the cluster
    assert settings.jobs_token  # the jobs API is not open to whoever reaches port 80


# --- Probes, ports, metrics -------------------------------------------------------------

def test_web_probes_ask_the_stack_s_health_through_nginx():
    web = find("Deployment", "web")
    spec = container(web)
    nginx_port = int(re.search(r"^EXPOSE (\d+)$", DOCKERFILE, re.M)[1])
    assert set(PATHS) == {"/healthz", "/readyz"}
    probes = {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz"}
    for probe, path in probes.items():
        assert spec[probe]["httpGet"]["path"] == path, probe
        assert port_number(web, spec[probe]["httpGet"]["port"]) == nginx_port, probe
    # /healthz checks no dependency; a blip of a few failed checks never restarts a pod.
    liveness = spec["livenessProbe"]
    assert liveness.get("failureThreshold", 3) >= 3
    assert liveness.get("failureThreshold", 3) * liveness.get("periodSeconds", 10) >= 30


def test_worker_probe_is_the_image_s_own_health_check_and_it_has_no_readiness():
    spec = container(find("Deployment", "worker"))
    healthcheck = json.loads(re.search(r"^HEALTHCHECK .*\n\s*CMD (\[.*\])$", DOCKERFILE, re.M)[1])
    assert healthcheck == ["healthcheck"]  # deploy/healthcheck.py, which becomes the stack's user
    assert importlib.util.find_spec("deploy.healthcheck")
    assert spec["livenessProbe"]["exec"] == {"command": healthcheck}
    assert spec["startupProbe"]["exec"] == {"command": healthcheck}
    assert "readinessProbe" not in spec  # it serves no traffic
    assert 80 not in container_ports(find("Deployment", "worker")).values()  # no nginx


@pytest.mark.parametrize("role", ROLES)
def test_the_metrics_port_is_declared_and_scraped(role, tmp_path):
    deployment = find("Deployment", role)
    settings = settings_of(deployment, tmp_path)
    assert settings.metrics_port
    assert container_ports(deployment)["metrics"] == settings.metrics_port
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(settings.metrics_port)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_the_service_sends_port_80_and_the_metrics_to_web_only(tmp_path):
    service = find("Service", "web")["spec"]
    web, worker = find("Deployment", "web"), find("Deployment", "worker")
    assert selects({"matchLabels": service["selector"]}, pod_labels(web))
    assert not selects({"matchLabels": service["selector"]}, pod_labels(worker))
    ports = {port["name"]: port for port in service["ports"]}
    assert set(ports) == {"http", "metrics"}
    assert ports["http"]["port"] == 80
    assert port_number(web, ports["http"].get("targetPort", 80)) == container_ports(web)["http"] == 80
    metrics = settings_of(web, tmp_path).metrics_port
    assert port_number(web, ports["metrics"].get("targetPort", ports["metrics"]["port"])) == metrics


# --- Deployments, budgets ---------------------------------------------------------------

def test_each_deployment_selects_its_own_pods_only():
    web, worker = find("Deployment", "web"), find("Deployment", "worker")
    assert {deployment["metadata"]["name"] for deployment in of_kind("Deployment")} == set(ROLES)
    assert selects(web["spec"]["selector"], pod_labels(web))
    assert selects(worker["spec"]["selector"], pod_labels(worker))
    assert not selects(web["spec"]["selector"], pod_labels(worker))
    assert not selects(worker["spec"]["selector"], pod_labels(web))
    assert web["spec"]["replicas"] == 2


@pytest.mark.parametrize("role", ROLES)
def test_each_deployment_has_a_disruption_budget_that_lets_a_drain_proceed(role):
    deployment = find("Deployment", role)
    budgets = [budget["spec"] for budget in of_kind("PodDisruptionBudget")
               if selects(budget["spec"]["selector"], pod_labels(deployment))]
    assert len(budgets) == 1, f"{len(budgets)} budgets select the {role} pods"
    budget = budgets[0]
    if "minAvailable" in budget:  # one that no eviction can meet blocks every node drain
        assert isinstance(budget["minAvailable"], int) and budget["minAvailable"] < deployment["spec"]["replicas"]
    else:
        assert isinstance(budget["maxUnavailable"], int) and budget["maxUnavailable"] >= 1


# --- Stopping ---------------------------------------------------------------------------

@pytest.mark.parametrize("role", ROLES)
def test_the_grace_period_outlasts_the_image_s_own_stop(role, tmp_path):
    deployment = find("Deployment", role)
    settings = settings_of(deployment, tmp_path)
    grace = pod(deployment)["terminationGracePeriodSeconds"]
    assert grace >= settings.drain_seconds + settings.graceful_timeout + GRACE_MARGIN
    assert grace >= longest_stop(settings) + GRACE_MARGIN
    assert "lifecycle" not in container(deployment)  # no preStop sleep: the image drains itself


# --- Security, writable folders, resources ----------------------------------------------

@pytest.mark.parametrize("role", ROLES)
def test_the_pod_runs_as_the_image_s_user_with_nothing_more(role):
    deployment = find("Deployment", role)
    pod_context = pod(deployment)["securityContext"]
    container_context = container(deployment)["securityContext"]
    effective = {**pod_context, **container_context}  # the container's own fields win
    assert effective["runAsNonRoot"] is True
    assert effective["runAsUser"] == effective["runAsGroup"] == pod_context["fsGroup"] == image_user()
    assert effective["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container_context["readOnlyRootFilesystem"] is True
    assert container_context["allowPrivilegeEscalation"] is False
    assert container_context["capabilities"] == {"drop": ["ALL"]}
    assert not container_context.get("privileged")
    assert not any(pod(deployment).get(host) for host in ("hostNetwork", "hostPID", "hostIPC"))
    assert pod(deployment)["automountServiceAccountToken"] is False
    # Without a capability, a port below 1024 needs the sysctl (Docker sets it; Kubernetes may not).
    sysctls = {sysctl["name"]: sysctl["value"] for sysctl in pod_context.get("sysctls", [])}
    privileged_ports = [port for port in container_ports(deployment).values() if port < 1024]
    if privileged_ports:
        assert int(sysctls[UNPRIVILEGED_PORT_START]) <= min(privileged_ports)
    # The Secret's files belong to root and to the group fsGroup: that group must read them.
    for volume in pod(deployment)["volumes"]:
        if "secret" in volume:
            assert volume["secret"].get("defaultMode", 0o644) & 0o040, volume["name"]


@pytest.mark.parametrize("role", ROLES)
def test_the_writable_mounts_are_exactly_the_folders_the_image_writes(role, tmp_path):
    deployment = find("Deployment", role)
    settings = settings_of(deployment, tmp_path)
    # As the container test with --read-only: the run folder (tmpfs), /tmp (Python's temporary
    # files) and the data folder; the log folder only when the logs go to files.
    needed = {settings.stack_run_dir, "/tmp", settings.stack_data_dir}
    needed |= {settings.stack_log_dir} if settings.logs_to_files else set()
    volumes = {volume["name"]: volume for volume in pod(deployment)["volumes"]}
    mounts = container(deployment)["volumeMounts"]
    writable = {mount["mountPath"]: volumes[mount["name"]] for mount in mounts if not mount.get("readOnly")}
    assert set(writable) == needed
    assert all(set(volume) == {"name", "emptyDir"} for volume in writable.values())
    assert writable[settings.stack_run_dir]["emptyDir"]["medium"] == "Memory"
    read_only = [volumes[mount["name"]] for mount in mounts if mount.get("readOnly")]
    assert all({"secret", "configMap"} & set(volume) for volume in read_only)


@pytest.mark.parametrize("role", ROLES)
def test_cpu_and_memory_are_requested_and_limited(role):
    deployment = find("Deployment", role)
    requests, limits = container(deployment)["resources"]["requests"], container(deployment)["resources"]["limits"]
    for resource in ("cpu", "memory"):
        assert quantity(requests[resource]) <= quantity(limits[resource]), resource
    # gunicorn's workers follow the CPU limit, rounded up (deploy/settings.py usable_cpus()), at most 8.
    assert 1 <= math.ceil(quantity(limits["cpu"])) <= 8
    # A memory-backed emptyDir counts against the memory limit: bounded, it leaves the request's room.
    in_memory = [volume["emptyDir"] for volume in pod(deployment)["volumes"]
                 if volume.get("emptyDir", {}).get("medium") == "Memory"]
    assert all("sizeLimit" in volume for volume in in_memory)
    tmpfs = sum(quantity(volume["sizeLimit"]) for volume in in_memory)
    assert quantity(limits["memory"]) - tmpfs >= quantity(requests["memory"])


# --- A task on a fresh pod: the CronJob -------------------------------------------------------

def test_the_cronjob_runs_a_registered_task_once_a_tick_on_a_pod_like_the_others(tmp_path):
    cronjob = find("CronJob", "nightly-report")
    spec = cronjob["spec"]
    Cron(spec["schedule"])  # the consumers' own cron parser reads it: the same five fields
    ZoneInfo(spec["timeZone"])
    assert spec["concurrencyPolicy"] == "Forbid"  # no two runs at once, as the consumers' default
    assert spec["startingDeadlineSeconds"] <= 3600  # a missed tick's grace, as the consumers' rule
    assert pod(cronjob)["restartPolicy"] == "Never"
    command = container(cronjob)["command"]
    assert command[:3] == ["python3", "-m", "deploy.jobs.run_task"]
    assert importlib.util.find_spec("deploy.jobs.run_task")
    import app  # noqa: F401, PLC0415  (registers the example's tasks, as JOB_MODULES does in the pod)
    assert command[3] in registry.specs, f"{command[3]} is not a task of the example"
    assert container(cronjob)["image"] == container(find("Deployment", "web"))["image"]
    settings = settings_of(cronjob, tmp_path)
    assert not settings.logs_to_files  # nothing to write but /tmp: the root filesystem is read-only
    context = {**pod(cronjob)["securityContext"], **container(cronjob)["securityContext"]}
    assert (context["runAsNonRoot"], context["runAsUser"], context["readOnlyRootFilesystem"]) == (True, image_user(),
                                                                                                  True)
    assert context["capabilities"] == {"drop": ["ALL"]} and context["allowPrivilegeEscalation"] is False
    assert {mount["mountPath"] for mount in container(cronjob)["volumeMounts"]} == {"/tmp"}


def test_the_cronjob_s_command_runs_the_task_and_says_so(tmp_path):
    """Its command, run here with the pod's variables: the task's result, exit status 0; an
    unknown task or bad arguments, status 2 naming them."""
    cronjob = find("CronJob", "nightly-report")
    variables = {**image_folders(), **environment(cronjob), "PATH": os.environ["PATH"],
                 "STACK_DATA_DIR": str(tmp_path)}
    run = subprocess.run([sys.executable, *container(cronjob)["command"][1:]], cwd=ROOT, env=variables,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["task"] == "nightly_report"
    assert '"message": "running nightly_report once, here, with no arguments"' in run.stderr
    for arguments, message in ((["no_such_task"], "error: no_such_task: unknown task 'no_such_task'; tasks: "),
                               (["job1", '{"seconds": "x"}'], "error: job1: seconds must be a number"),
                               (["job1", "{not json"], "error: job1: Expecting property name")):
        refused = subprocess.run([sys.executable, "-m", "deploy.jobs.run_task", *arguments], cwd=ROOT, env=variables,
                                 capture_output=True, text=True, timeout=60)
        assert (refused.returncode, refused.stderr.startswith(message)) == (2, True), refused.stderr
