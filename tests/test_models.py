"""A model service (tests/modelservice) built the README's way ("Serving a model": its own
requirements installed with pip in a Dockerfile FROM the stack, PRELOAD_APP=true), checked
from outside through nginx: predictions, bad input, the warm-up behind /readyz, the app
loaded once in gunicorn's master, requests batched, and `reload app` under load."""

import json
import re
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests import figures
from tests.containers import serving_container, wait_until
from tests.load import in_second_process
from tests.support import ROOT, build_image

MODELSERVICE = ROOT / "tests" / "modelservice"
WARMUP_SECONDS = 8  # the example's MODEL_WARMUP_SECONDS: a warm-up long enough to be seen


@pytest.fixture(scope="module")
def modelservice_image(image):
    """tests/modelservice/Dockerfile, on the image under test."""
    return build_image("flask-stack-test-modelservice", MODELSERVICE, f"--build-arg=STACK_IMAGE={image}")


@pytest.fixture(scope="module")
def service(modelservice_image, request):
    """One container of modelservice with two workers, freshly started: the first test sees its
    warm-up. Its logs stay inside (the tests read them there), printed if a test failed."""
    yield from serving_container(modelservice_image, request,
                                 env={"WEB_CONCURRENCY": "2", "MODEL_WARMUP_SECONDS": str(WARMUP_SECONDS)})


def predict(container, body: bytes):
    return container.request("/predict", method="POST", headers={"Content-Type": "application/json"}, body=body)


def test_readyz_is_503_naming_the_warm_up_until_the_model_is_warm(service):
    started = time.monotonic()
    response = service.get("/readyz")
    assert response.status == 503, response.body
    assert response.json()["failures"] == {"model_warmed_up": "returned False"}
    assert service.get("/healthz").status == 200  # alive meanwhile: not restarted for warming up
    wait_until(lambda: service.get("/readyz").status == 200, WARMUP_SECONDS + 20, "/readyz answering 200")
    assert time.monotonic() - started < WARMUP_SECONDS + 20
    service.wait_until_healthy()


@pytest.mark.parametrize("features, expected", [([0, 0], 1), ([10, 0], 2), ([0, 10], 0), ([-5.5, 5], 1)])
def test_a_prediction_through_nginx(service, features, expected):
    response = predict(service, json.dumps({"features": features}).encode())
    assert (response.status, response.json()) == (200, {"class": expected})
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])


@pytest.mark.parametrize("body, message", [
    (b"5.1, 3.5", 'the body must be JSON: {"features": [2 numbers]}'),
    (b'{"petals": [1, 2]}', 'the body must be JSON: {"features": [2 numbers]}'),
    (b'{"features": [1, 2, 3, 4]}', "features must be a list of 2 numbers, not [1, 2, 3, 4]"),
    (b'{"features": "1 2"}', "features must be a list of 2 numbers, not 1 2"),
    (b'{"features": [1, "x"]}', "features[1] must be a finite number, not x"),
    (b'{"features": [true, 1]}', "features[0] must be a finite number, not True"),
    (b'{"features": [1, NaN]}', "features[1] must be a finite number, not nan"),
])
def test_bad_input_is_a_400_naming_what_is_wrong(service, body, message):
    response = predict(service, body)
    assert response.status == 400
    assert response.json() == {"error": "Bad Request", "message": message}


def test_another_method_is_a_json_405(service):
    response = service.get("/predict")
    assert response.status == 405
    assert response.headers["Content-Type"] == "application/json"


def test_the_app_and_its_model_are_loaded_once_in_the_master_and_shared_by_forked_workers(service):
    master = service.pid_of("gunicorn")
    workers = service.children(master)
    assert len(workers) == 2
    serving = re.findall(r"\[(\d+)\] \[INFO\] \[rid=-\] deploy\.wsgi: serving modelservice:create_app\(\)",
                         service.exec("cat", "/var/log/app/app/app.log").stdout)
    assert serving == [str(master)]  # imported by the master only: the workers are its forks
    # The master has onnxruntime's library mapped (the model was loaded there), each worker the same.
    for pid in (master, *workers):
        maps = service.exec("run-as-stack", "cat", f"/proc/{pid}/maps").stdout
        assert "onnxruntime_pybind11_state" in maps, f"process {pid} has not loaded onnxruntime"


def test_the_workers_native_libraries_start_one_thread_per_cpu_in_all(service):
    cpus = int(service.exec("nproc").stdout)
    for worker in service.children(service.pid_of("gunicorn")):
        environ = service.exec("run-as-stack", "cat", f"/proc/{worker}/environ").stdout.split("\0")
        threads = {name: value for name, _, value in (entry.partition("=") for entry in environ)
                   if name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
        assert threads == dict.fromkeys(threads, str(max(1, cpus // 2))) and len(threads) == 3


def batch_sizes(container) -> dict[str, float]:
    """The batch-size histogram of `classify` from the stack's metrics (port 9100, inside the container)."""
    text = container.metrics()
    return {f"{name}{le or ''}": float(value) for name, le, value in re.findall(
        r'^flask_stack_batch_size_(bucket|count|sum)\{function="classify"(?:,le="([\d.+Inf]+)")?\} (\S+)$', text, re.M)}


def test_concurrent_requests_are_gathered_into_batches(service):
    before = batch_sizes(service)
    calls = 4 * 64
    with ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(lambda _: predict(service, b'{"features": [10, 0]}'), range(calls)))
    assert [(answer.status, answer.json()) for answer in answers] == [(200, {"class": 2})] * calls
    after = batch_sizes(service)
    batches = after["count"] - before.get("count", 0)
    assert after["sum"] - before.get("sum", 0) == calls  # every call counted once...
    batches_of_one = after["bucket1.0"] - before.get("bucket1.0", 0)
    assert batches < calls and batches_of_one < batches, after  # ...in batches, some of several calls


def test_reload_with_preload_loads_new_code_under_load_and_fails_no_request(service):
    """`reload app` restarts gunicorn (a preloaded app is not imported again by HUP): the new
    master imports the changed code; requests wait in the socket's backlog meanwhile."""
    master = service.pid_of("gunicorn")
    code = "/srv/modelservice/__init__.py"
    service.exec("cp", code, "/tmp/modelservice.py.good")
    try:
        service.exec("sed", "-i", 's/service="modelservice"/service="new code"/', code)
        with in_second_process(service.port, seconds=12, path="/about") as result:
            time.sleep(3)
            reload = service.exec("reload", "app")
        assert "restarted" in reload.stderr
        assert not result.failures, f"reload: {result.summary()}; failed: {result.failures[:5]}"
        assert service.pid_of("gunicorn") != master
        assert service.get("/about").json()["service"] == "new code"
    finally:
        service.exec("cp", "/tmp/modelservice.py.good", code)
    longest, median = max(result.latencies()) * 1000, statistics.median(result.latencies()) * 1000
    figures.record("reload app with PRELOAD_APP=true (gunicorn restarted), 12 s", result.sent, 0,
                   f"the longest request {longest:.0f} ms (median {median:.0f} ms): the pause while the new "
                   "master loaded the app")
    service.exec("reload", "app")
    wait_until(lambda: service.get("/about").json()["service"] == "modelservice", 30, "the old code back")
