"""`glassdetect serve`: the HTTP API (in process), limits and bad input (never a 500), a live
uvicorn server under a loopback load test, and the upload page driven in a real browser."""
import asyncio
import base64
import io
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
httpx = pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from conftest import make_checkpoint, make_image  # noqa: E402
from glassdetect.inference.api import Detector  # noqa: E402
from glassdetect.service.batcher import BatchConfig, Batcher, run_isolated  # noqa: E402
from glassdetect.bench.serve import serving  # noqa: E402
from glassdetect.service.serve import create_app  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
MAX_BYTES = 600_000
MAX_PIXELS = 400_000


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("serve") / "ckpt", 3, k=2, patch=64, global_size=64)


@pytest.fixture(scope="module")
def det(ckpt):
    return Detector.from_pretrained(ckpt, "cpu")


@pytest.fixture(scope="module", params=[8, 1], ids=["batched", "unbatched"])
def client(det, request):
    """The in-process app, batching and with ``max_batch=1``: every limit holds in both."""
    app = create_app(det, max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS, batch=BatchConfig(max_batch=request.param))
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def jpeg(tmp_path_factory):
    p = tmp_path_factory.mktemp("serve_img") / "photo.jpg"
    make_image(p, 240, 320, seed=4)
    return p


def post_file(client, data, name="x.jpg", **form):
    return client.post("/v1/detect", files={"file": (name, data, "application/octet-stream")}, data=form)


# ------------------------------------------------------------------------------- in process

def test_healthz_and_page(client):
    h = client.get("/healthz")
    assert h.status_code == 200 and h.json()["status"] == "ok" and h.json()["model"]["k"] == 2
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="file"' in page.text and "v1/detect" in page.text
    assert "/v1/detect" in client.get("/openapi.json").json()["paths"]


def test_detect_matches_the_python_api(client, det, jpeg):
    data = jpeg.read_bytes()
    r = post_file(client, data, "photo.jpg")
    assert r.status_code == 200, r.text
    body = r.json()
    ref = det.predict(data)
    assert body["fake_probability"] == pytest.approx(ref.probability, abs=1e-6)
    assert body["decision"] == ref.decision and body["image_size"] == [240, 320] and body["format"] == "JPEG"
    assert body["filename"] == "photo.jpg" and len(body["crops"]) == 2 and "evidence_map" not in body
    assert {"box", "weight", "score", "draw"} <= set(body["crops"][0])
    raw = client.post("/v1/detect", content=data, headers={"content-type": "image/jpeg"})
    assert raw.status_code == 200 and raw.json()["fake_probability"] == body["fake_probability"]


def test_explain_returns_a_png_evidence_map(client, jpeg):
    for r in (post_file(client, jpeg.read_bytes(), explain="true"),
              client.post("/v1/detect?explain=true", files={"file": ("a.jpg", jpeg.read_bytes())})):
        assert r.status_code == 200
        url = r.json()["evidence_map"]
        assert url.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as im:
            assert im.format == "PNG" and im.width == 320


def test_limits(client, tmp_path):
    too_big = post_file(client, b"\xff\xd8" + b"0" * (MAX_BYTES + 70_000))
    assert too_big.status_code == 413 and too_big.json()["error"] == "payload_too_large"

    def chunks():  # no Content-Length: the limit is enforced while streaming
        for _ in range(100):
            yield b"1" * 10_000

    streamed = client.post("/v1/detect", content=chunks(), headers={"content-type": "image/jpeg"})
    assert streamed.status_code == 413
    assert post_file(client, b"just some text, not an image").status_code == 415
    assert post_file(client, b"").status_code == 415
    assert client.post("/v1/detect", content=b"%PDF-1.4 nope", headers={"content-type": "application/pdf"}).status_code == 415
    buf = io.BytesIO()
    Image.new("RGB", (800, 600), (10, 20, 30)).save(buf, "PNG")  # 480,000 px > 400,000, but only a few KB
    px = post_file(client, buf.getvalue(), "big.png")
    assert px.status_code == 422 and px.json()["error"] == "too_many_pixels"
    missing = client.post("/v1/detect", files={"image": ("a.jpg", b"123")})
    assert missing.status_code == 422 and missing.json()["error"] == "missing_file"
    broken = client.post("/v1/detect", content=b"--x\r\n", headers={"content-type": "multipart/form-data"})
    assert broken.status_code in (400, 422)


def test_every_bad_image_is_a_clean_4xx(client, bad_images_dir):
    d, expected = bad_images_dir
    for name, exp in expected.items():
        r = post_file(client, (d / name).read_bytes(), name)
        assert r.status_code < 500, (name, r.status_code, r.text)
        if exp.ok:
            assert r.status_code == 200 and r.json()["image_size"] == list(exp.size), name
        else:
            assert r.status_code in (415, 422) and r.json()["detail"], name


@pytest.mark.parametrize("max_batch", [8, 1])
def test_busy_server_answers_503(det, jpeg, max_batch):
    with TestClient(create_app(det, max_waiting=0, batch=BatchConfig(max_batch=max_batch))) as c:
        r = post_file(c, jpeg.read_bytes())
        assert r.status_code == 503 and r.headers["retry-after"] == "1"


def test_create_app_leaves_the_callers_detector_alone(ckpt):
    from glassdetect.views.limits import DEFAULT_MAX_PIXELS, SERVE_MAX_PIXELS

    mine = Detector.from_pretrained(ckpt, "cpu")
    before = dict(vars(mine))
    app = create_app(mine, max_pixels=1234)
    assert vars(mine) == before and mine.max_pixels == DEFAULT_MAX_PIXELS
    assert app.state.detector is not mine and app.state.detector.max_pixels == 1234
    assert app.state.detector.model is mine.model  # a copy of the settings, the same loaded model
    assert create_app(mine).state.detector.max_pixels == SERVE_MAX_PIXELS


def test_the_services_pixel_limit_not_pillows_guard(client, jpeg, monkeypatch):
    """A host process's own (here tiny) setting for Pillow's decompression-bomb guard neither refuses
    an upload the service allows nor answers first for one it refuses; the setting stays as it was."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 240×320 = 76,800 px: over twice that
    ok = post_file(client, jpeg.read_bytes(), "photo.jpg")
    assert ok.status_code == 200 and ok.json()["image_size"] == [240, 320], ok.text
    buf = io.BytesIO()
    Image.new("RGB", (800, 600), (10, 20, 30)).save(buf, "PNG")
    px = post_file(client, buf.getvalue(), "big.png")
    assert px.status_code == 422 and px.json()["error"] == "too_many_pixels"
    assert Image.MAX_IMAGE_PIXELS == 10_000


# ------------------------------------------------------------------------------ live server

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(ckpt):
    """`glassdetect serve` in a subprocess on a free loopback port; yields its base URL."""
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.Popen(
        [sys.executable, "-m", "glassdetect.cli", "serve", str(ckpt), "--host", "127.0.0.1", "--port", str(port),
         "--device", "cpu", "--threads", "1", "--concurrency", "2", "--log-level", "warning", "--no-access-log"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited early:\n{proc.stdout.read().decode(errors='replace')}")
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("server did not become healthy within 90 s")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_load_200_requests_16_concurrent(server, tmp_path):
    files = []
    for i in range(4):
        make_image(tmp_path / f"l{i}.jpg", 200 + 40 * i, 260, seed=20 + i)
        files.append((tmp_path / f"l{i}.jpg").read_bytes())
    n, concurrency = 200, 16
    latencies, errors, health = [], [], []

    async def main():
        todo = iter(range(n))
        limits = httpx.Limits(max_connections=concurrency + 2)
        async with httpx.AsyncClient(base_url=server, timeout=60, limits=limits) as cl:
            async def worker():
                for i in todo:
                    t0 = time.perf_counter()
                    try:
                        r = await cl.post("/v1/detect", files={"file": (f"{i}.jpg", files[i % 4], "image/jpeg")})
                        ok = r.status_code == 200 and 0 <= r.json()["fake_probability"] <= 1
                        if not ok:
                            errors.append((r.status_code, r.text[:200]))
                    except httpx.HTTPError as exc:
                        errors.append(repr(exc))
                    latencies.append(time.perf_counter() - t0)

            async def probe():  # the event loop keeps answering while inference runs in threads
                while len(latencies) < n:
                    t0 = time.perf_counter()
                    r = await cl.get("/healthz")
                    assert r.status_code == 200
                    health.append(time.perf_counter() - t0)
                    await asyncio.sleep(0.05)

            await asyncio.gather(probe(), *(worker() for _ in range(concurrency)))

    t0 = time.perf_counter()
    asyncio.run(asyncio.wait_for(main(), timeout=180))
    wall = time.perf_counter() - t0
    assert not errors, errors[:5]
    assert len(latencies) == n
    q = statistics.quantiles(latencies, n=20)
    hq = statistics.quantiles(health, n=20) if len(health) > 1 else [float("nan")] * 19
    print(f"\nload: {n} requests, {concurrency} concurrent, {wall:.1f} s ({n / wall:.1f} req/s); "
          f"latency p50 {statistics.median(latencies) * 1000:.0f} ms, p95 {q[18] * 1000:.0f} ms; "
          f"/healthz during load p50 {statistics.median(health) * 1000:.0f} ms, p95 {hq[18] * 1000:.0f} ms")
    assert httpx.get(server + "/healthz").json()["served"] >= n


def test_upload_page_in_a_real_browser(server, jpeg, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (Debian package 'chromium'; `make install` installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the 'playwright' Python package is not installed")
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"]
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=args, headless=True, timeout=60_000)
        try:
            page = browser.new_page()
            page.goto(server + "/", timeout=30_000)
            assert page.title().startswith("glassdetect")
            assert page.is_disabled("#submit")
            page.set_input_files("#file", str(jpeg))
            assert page.text_content("#filename") == jpeg.name
            page.click("#submit")
            page.wait_for_selector("#result:not([hidden])", timeout=30_000)
            verdict = page.text_content("#verdict").strip().lower()
            assert verdict in ("real", "fake", "unsure")
            prob = page.text_content("#probability")
            assert prob.endswith("%") and 0 <= float(prob[:-1]) <= 100
            assert page.get_attribute("#evidence", "src").startswith("data:image/png;base64,")
            page.wait_for_function("document.getElementById('evidence').naturalWidth > 0", timeout=10_000)
            assert page.locator("#crops tbody tr").count() == 2
            page.screenshot(path=os.environ.get("GD_SCREENSHOT", str(tmp_path / "page.png")), full_page=True)
            # a file that is not an image: a readable error, no verdict
            bad = tmp_path / "notes.jpg"
            bad.write_text("not an image")
            page.set_input_files("#file", str(bad))
            page.click("#submit")
            page.wait_for_selector("#error:not([hidden])", timeout=30_000)
            assert "not an image" in page.text_content("#error")
            assert page.is_hidden("#result")
        finally:
            browser.close()


# ------------------------------------------------------------------------------- batching

def _post_all(base: str, uploads: list[tuple[str, bytes]], explain: bool = False) -> list[httpx.Response]:
    """All uploads at once, one connection each (so the batched service gets them together)."""
    async def main():
        async with httpx.AsyncClient(base_url=base, timeout=60,
                                     limits=httpx.Limits(max_connections=len(uploads) + 1)) as cl:
            return await asyncio.gather(*(
                cl.post("/v1/detect", files={"file": (name, data, "application/octet-stream")},
                        data={"explain": "true"} if explain else {})
                for name, data in uploads))
    return asyncio.run(main())


@pytest.fixture(scope="module")
def uploads(tmp_path_factory):
    """Six images of different sizes and formats (different crop positions per image)."""
    d = tmp_path_factory.mktemp("batch_imgs")
    out = []
    for i, (h, w, ext) in enumerate([(240, 320, "jpg"), (300, 200, "png"), (180, 180, "jpg"), (256, 400, "webp"),
                                     (400, 300, "jpg"), (128, 160, "png")]):
        make_image(d / f"b{i}.{ext}", h, w, seed=30 + i)
        out.append((f"b{i}.{ext}", (d / f"b{i}.{ext}").read_bytes()))
    return out


def _same_verdict(a: dict, b: dict) -> None:
    assert a["fake_probability"] == pytest.approx(b["fake_probability"], abs=1e-5)
    assert a["decision"] == b["decision"] and a["image_size"] == b["image_size"] and a["filename"] == b["filename"]
    assert [c["box"] for c in a["crops"]] == [c["box"] for c in b["crops"]]
    assert [c["weight"] for c in a["crops"]] == pytest.approx([c["weight"] for c in b["crops"]], abs=1e-5)
    assert [c["score"] for c in a["crops"]] == pytest.approx([c["score"] for c in b["crops"]], abs=1e-5)


def test_batched_service_equals_unbatched_per_image(det, uploads):
    batched_app = create_app(det, batch=BatchConfig(max_batch=8, max_wait_ms=2000))
    with TestClient(create_app(det, batch=BatchConfig(max_batch=1))) as plain, serving(batched_app) as base:
        for explain in (False, True):
            got = _post_all(base, uploads, explain)
            assert [r.status_code for r in got] == [200] * len(uploads), [r.text for r in got]
            for (name, data), r in zip(uploads, got):
                ref = post_file(plain, data, name, **({"explain": "true"} if explain else {}))
                assert ref.status_code == 200
                _same_verdict(r.json(), ref.json())
                assert ("evidence_map" in r.json()) == explain
                if explain:
                    assert r.json()["evidence_map"].startswith("data:image/png;base64,")
                    assert r.json()["evidence_map"] == ref.json()["evidence_map"]
        stats = httpx.get(base + "/healthz").json()["batching"]
    assert stats["max_batch"] == 8 and stats["images"] == 2 * len(uploads)
    assert stats["largest"] > 1 and stats["batches"] < 2 * len(uploads), stats  # requests really shared passes


class _PoisonDetector(Detector):
    """Fails any forward pass that contains the image named 'poison.jpg'."""

    def run_batch(self, batch):
        if any(it["name"] == "poison.jpg" for it in batch["items"]):
            raise ValueError("poison.jpg: the model refuses this one")
        return super().run_batch(batch)


def test_mixed_good_and_bad_files_in_one_batch(ckpt, det, bad_images_dir, jpeg):
    d, expected = bad_images_dir
    names = sorted(expected)
    files = [(n, (d / n).read_bytes()) for n in names] + [("poison.jpg", jpeg.read_bytes())]
    poisoned = _PoisonDetector.from_pretrained(ckpt, "cpu")
    app = create_app(poisoned, batch=BatchConfig(max_batch=len(files), max_wait_ms=2000))  # all in one batch
    with serving(app) as base:
        got = _post_all(base, files)
        stats = httpx.get(base + "/healthz").json()["batching"]
    for (name, data), r in zip(files, got):
        assert r.status_code < 500, (name, r.status_code, r.text)
        if name == "poison.jpg":
            assert r.status_code == 422 and "refuses" in r.json()["detail"]
        elif expected[name].ok:
            assert r.status_code == 200, (name, r.text)
            assert r.json()["fake_probability"] == pytest.approx(det.predict(data).probability, abs=1e-5), name
        else:
            assert r.status_code in (415, 422) and r.json()["detail"], name
    assert stats["retried_alone"] >= 1 and stats["largest"] > 1, stats


class _SlowDetector(Detector):
    def run_batch(self, batch):
        time.sleep(1.5)
        return super().run_batch(batch)


def test_healthz_answers_while_a_slow_batch_runs(ckpt, jpeg):
    slow = _SlowDetector.from_pretrained(ckpt, "cpu")
    app = create_app(slow, batch=BatchConfig(max_batch=4, max_wait_ms=50), concurrency=1)
    data = jpeg.read_bytes()

    async def main(base):
        async with httpx.AsyncClient(base_url=base, timeout=60) as cl:
            posts = [asyncio.ensure_future(cl.post("/v1/detect", content=data, headers={"content-type": "image/jpeg"}))
                     for _ in range(3)]
            while (await cl.get("/healthz")).json()["in_flight"] < 3:  # all three inside the service
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)  # the forward pass (1.5 s) is under way
            probes = []
            for _ in range(5):
                t0 = time.perf_counter()
                h = await cl.get("/healthz")
                probes.append((time.perf_counter() - t0, h.json()["in_flight"]))
            return probes, await asyncio.gather(*posts)

    with serving(app) as base:
        probes, answers = asyncio.run(main(base))
    assert [r.status_code for r in answers] == [200, 200, 200]
    assert all(in_flight >= 1 for _, in_flight in probes), probes  # the slow batch was still running
    assert max(t for t, _ in probes) < 0.5, probes


class _CountingDetector(Detector):
    calls: list[int]

    def run_batch(self, batch):
        self.calls.append(len(batch["items"]))
        return super().run_batch(batch)


def test_max_batch_1_is_the_unbatched_path(ckpt, jpeg):
    counting = _CountingDetector.from_pretrained(ckpt, "cpu")
    counting.calls = []
    app = create_app(counting, batch=BatchConfig(max_batch=1, max_wait_ms=500))
    with TestClient(app) as c:
        while c.get("/readyz").status_code != 200:  # the warm-up pass builds the CPU graph first
            time.sleep(0.02)
        assert counting.calls == [1]
        counting.calls.clear()  # the app runs a copy of the detector that shares this list
        t0 = time.perf_counter()
        r = post_file(c, jpeg.read_bytes(), "photo.jpg")
        assert r.status_code == 200 and time.perf_counter() - t0 < 0.5  # no waiting for company
        h = c.get("/healthz").json()["batching"]
    assert app.state.service.batcher is None
    assert counting.calls == [1]  # the request's own forward pass, as before batching existed
    assert h == {"max_batch": 1, "max_wait_ms": 500.0}
    with TestClient(create_app(counting)) as c:  # the default on the CPU: no batching
        assert c.get("/healthz").json()["batching"]["max_batch"] == 1


def test_max_batch_auto_by_device():
    assert BatchConfig().resolved("cpu") == BatchConfig(max_batch=1)
    assert BatchConfig(max_wait_ms=3).resolved("cuda") == BatchConfig(max_batch=8, max_wait_ms=3)
    assert BatchConfig(max_batch=4).resolved("cpu").max_batch == 4  # an explicit choice stays


def test_a_lone_request_does_not_wait_for_a_batch(det, jpeg):
    app = create_app(det, batch=BatchConfig(max_batch=8, max_wait_ms=2000))
    with TestClient(app) as c:
        t0 = time.perf_counter()
        assert post_file(c, jpeg.read_bytes()).status_code == 200
        assert time.perf_counter() - t0 < 1.5  # nobody else was preparing: the batch of one ran at once
        assert c.get("/healthz").json()["batching"]["batches"] == 1


def test_batch_config_is_checked():
    for bad in ({"max_batch": -1}, {"max_wait_ms": -1}):
        with pytest.raises(ValueError, match="max_"):
            BatchConfig(**bad)
    assert not BatchConfig(max_batch=1).batched and BatchConfig(max_batch=2).batched


def test_batcher_groups_up_to_max_batch_and_isolates_failures():
    seen: list[list[int]] = []

    def run(items):
        seen.append(list(items))
        if 3 in items:
            raise RuntimeError("three is bad")
        return [i * 10 for i in items]

    async def main():
        b = Batcher(run, BatchConfig(max_batch=4, max_wait_ms=200))
        with b.expecting():  # one more request is on its way: the first batch waits for company
            first = [asyncio.ensure_future(b.submit(i)) for i in range(6)]
            await asyncio.sleep(0.05)
        results = await asyncio.gather(*first, return_exceptions=True)
        await b.stop()
        return results, b.stats

    results, stats = asyncio.run(main())
    assert results[:3] == [0, 10, 20] and isinstance(results[3], RuntimeError) and results[4:] == [40, 50]
    assert max(len(s) for s in seen) == 4 and seen[0] == [0, 1, 2, 3]  # the failing batch, then each alone
    assert stats.retried_alone == 1 and stats.images == 6
    # a batch answering with the wrong number of results is split too
    assert run_isolated(lambda items: [len(items)], ["a", "b"]) == ([1, 1], True)


def test_serve_cli_checks_the_batch_options(ckpt):
    from typer.testing import CliRunner

    from glassdetect.cli import app

    r = CliRunner().invoke(app, ["serve", str(ckpt), "--max-batch", "-2"])
    assert r.exit_code != 0 and "max_batch" in r.output
