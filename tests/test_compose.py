"""`docker compose up --build` with the project's compose.yaml serves the same stack."""

import os
import subprocess

from tests.containers import Container, free_port, wait_for_line
from tests.support import ROOT, require_tool


def compose_command() -> list[str]:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return [require_tool("docker-compose", "docker-compose")]


def test_compose_up_serves_the_stack(image, log_dir, tmp_path):
    # The override only adapts compose.yaml to the test: logs in a temporary folder, and a
    # build that can reach a mirror served on the host's loopback (as the image fixture's).
    override = tmp_path / "compose.test.yaml"
    override.write_text(
        "services:\n"
        "  web:\n"
        "    build:\n"
        "      network: host\n"
        f"    image: flask-stack:compose-test\n"
        "    volumes:\n"
        f"      - {log_dir}:/var/log/app\n")
    port = free_port()
    compose = [*compose_command(), "-p", f"flaskstacktest{os.getpid()}",
               "-f", str(ROOT / "compose.yaml"), "-f", str(override)]
    env = {**os.environ, "HOST_PORT": f"127.0.0.1:{port}"}
    try:
        up = subprocess.run([*compose, "up", "-d", "--build"], env=env, capture_output=True, text=True, timeout=600)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        container_id = subprocess.run([*compose, "ps", "-q", "web"], env=env, capture_output=True,
                                      text=True, check=True).stdout.strip()
        container = Container(container_id)
        container.wait_until_serving()
        assert container.port == port
        job = container.get("/job2?arg1=hello&arg2=123&seconds=0.1")
        assert job.json() == {"task": "job2", "arg1": "hello", "arg2": "123", "seconds": 0.1}
        wait_for_line(log_dir / "nginx/access.log", r"/job2\?arg1=hello")
    finally:
        subprocess.run([*compose, "down", "-v", "--rmi", "all"], env=env, capture_output=True, timeout=120)
