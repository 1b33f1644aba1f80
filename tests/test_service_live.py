"""The service as a real process on 127.0.0.1: a slow client does not stall others, SIGTERM during a
slow request answers it and exits 0, and the container's entry point and health check (the
Dockerfile's own commands, run in this virtual environment) serve with tokens and JSON logs."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")

from conftest import make_checkpoint, make_image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SLOW_S = 3.0
SLOW_SERVER = """
import sys, time
from glassdetect.inference.api import Detector
from glassdetect.service.batcher import BatchConfig
from glassdetect.service.lifecycle import run_server
from glassdetect.service.ops import log_config
from glassdetect.service.serve import create_app

class Slow(Detector):  # the image named slow.jpg takes SLOW_S seconds in its forward pass
    def run_batch(self, batch):
        if any(it["name"] == "slow.jpg" for it in batch["items"]):
            time.sleep(float(sys.argv[3]))
        return super().run_batch(batch)

app = create_app(Slow.from_pretrained(sys.argv[1], "cpu"), batch=BatchConfig(max_batch=1))
run_server(app, "127.0.0.1", int(sys.argv[2]), shutdown_timeout_s=20, on_drain=app.state.service.readiness.drain,
           log_config=log_config("text", "warning"), log_level="warning", access_log=False)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra) -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", **extra)


def _wait_ready(proc: subprocess.Popen, base: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            pytest.fail(f"server exited early ({proc.returncode}):\n{proc.stderr.read().decode(errors='replace')}")
        try:
            if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"server not ready within {timeout_s:.0f} s")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("live") / "ckpt", 3, k=2, patch=64, global_size=64)


@pytest.fixture(scope="module")
def jpeg(tmp_path_factory):
    p = tmp_path_factory.mktemp("live_img") / "photo.jpg"
    make_image(p, 200, 260, seed=11)
    return p.read_bytes()


@pytest.fixture(scope="module")
def slow_server(ckpt, tmp_path_factory):
    """A server whose forward pass on 'slow.jpg' takes SLOW_S seconds; (process, base URL)."""
    script = tmp_path_factory.mktemp("slow") / "slow_server.py"
    script.write_text(SLOW_SERVER)
    port = _free_port()
    proc = subprocess.Popen([sys.executable, str(script), str(ckpt), str(port), str(SLOW_S)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, base)
        yield proc, base
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_slow_client_does_not_stall_others(slow_server, jpeg):
    _, base = slow_server
    port = int(base.rsplit(":", 1)[1])
    head = (f"POST /v1/detect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: {len(jpeg)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as trickle:
        trickle.sendall(head + jpeg[: len(jpeg) // 2])  # half the body, then nothing for a while
        others = [httpx.post(base + "/v1/detect", content=jpeg, headers={"content-type": "image/jpeg"}, timeout=30)
                  for _ in range(3)]
        assert [r.status_code for r in others] == [200, 200, 200]
        trickle.setblocking(False)
        with pytest.raises(BlockingIOError):  # the slow client is still unanswered: the others did not wait for it
            trickle.recv(1)
        trickle.setblocking(True)
        trickle.sendall(jpeg[len(jpeg) // 2:])
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += trickle.recv(4096)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


def test_sigterm_during_a_slow_request_answers_it_and_exits_0(slow_server, jpeg):
    proc, base = slow_server
    got: dict = {}

    def slow_post():
        got["r"] = httpx.post(base + "/v1/detect", files={"file": ("slow.jpg", jpeg, "image/jpeg")}, timeout=60)

    t = threading.Thread(target=slow_post)
    t.start()
    while httpx.get(base + "/healthz", timeout=5).json()["in_flight"] < 1:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    refused = False
    for _ in range(100):  # new connections are refused while the slow request still runs
        try:
            httpx.get(base + "/healthz", timeout=1)
        except httpx.ConnectError:
            refused = True
            break
        time.sleep(0.02)
    t.join(60)
    assert refused and not t.is_alive()
    assert got["r"].status_code == 200 and 0 <= got["r"].json()["fake_probability"] <= 1
    assert proc.wait(timeout=30) == 0, proc.stderr.read().decode(errors="replace")


# ------------------------------------------------------------------------------ the container

def _dockerfile_command(text: str, instruction: str) -> list[str]:
    """The JSON (exec form) arguments of a Dockerfile instruction, continuation lines joined."""
    joined = text.replace("\\\n", " ")
    m = re.search(rf"^{instruction}\s+(?:.*?CMD\s+)?(\[.*\])\s*$", joined, re.M)
    assert m, f"Dockerfile: no exec-form {instruction}"
    return json.loads(m.group(1))


def test_the_dockerfile(tmp_path):
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM .+ AS build$", text, re.M) and re.search(r"^FROM base AS runtime$", text, re.M)
    assert "USER glassdetect" in text and "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu" in text
    assert "ARG CHECKPOINT" in text  # --target bundled copies the checkpoint in
    assert _dockerfile_command(text, "HEALTHCHECK") == ["python", "-m", "glassdetect.service.healthcheck"]  # /readyz
    assert text.strip().splitlines()[-1] == "FROM base AS runtime"  # the default target mounts the model
    compose = (ROOT / "compose.yaml").read_text()
    assert "./model:/model:ro" in compose and "GLASSDETECT_TOKEN_FILE" in compose and "stop_grace_period" in compose


def test_the_containers_entry_point_and_health_check(ckpt, jpeg, tmp_path):
    """ENTRYPOINT + CMD as the Dockerfile gives them (the model path, host and port made local), the token
    file as compose mounts it, then the HEALTHCHECK command until it passes; SIGTERM exits 0."""
    text = (ROOT / "Dockerfile").read_text()
    port = _free_port()
    local = {"/model": str(ckpt), "0.0.0.0": "127.0.0.1", "8000": str(port)}
    cmd = [local.get(a, a) for a in _dockerfile_command(text, "ENTRYPOINT") + _dockerfile_command(text, "CMD")]
    assert cmd[:2] == ["glassdetect", "serve"] and "--log-format" in cmd
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("ops:" + "t" * 32 + "\n")
    env = _env(GLASSDETECT_TOKEN_FILE=str(tokens), PORT=str(port))
    exe = [str(Path(sys.executable).parent / cmd[0]), *cmd[1:]]
    health = _dockerfile_command(text, "HEALTHCHECK")
    health = [sys.executable if a == "python" else a for a in health]
    proc = subprocess.Popen(exe, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while subprocess.run(health, env=env, capture_output=True, timeout=30).returncode != 0:
            assert proc.poll() is None, proc.stderr.read().decode(errors="replace")
            assert time.monotonic() < deadline, "the health check did not pass within 90 s"
            time.sleep(0.2)
        assert httpx.post(base + "/v1/detect", content=jpeg).status_code == 401
        ok = httpx.post(base + "/v1/detect", content=jpeg, headers={"Authorization": "Bearer " + "t" * 32,
                                                                    "X-Request-ID": "docker-1"}, timeout=30)
        assert ok.status_code == 200 and ok.headers["x-request-id"] == "docker-1"
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    lines = [json.loads(line) for line in proc.stderr.read().decode().splitlines() if line.strip()]
    assert code == 0
    request = next(line for line in lines if line.get("request_id") == "docker-1")
    assert request["status"] == 200 and request["token"] == "ops" and request["image_size"] == [200, 260]
    assert any(line["logger"] == "uvicorn.error" for line in lines)  # every line JSON, uvicorn's too
