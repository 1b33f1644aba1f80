"""The service's operations side, in process: access tokens, /metrics, request ids, the rate limit,
the request deadline, readiness, the JSON access log, and the CLI's messages (missing extra, warning)."""
import asyncio
import json
import logging
import sys
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
pytest.importorskip("prometheus_client")

from fastapi.testclient import TestClient  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from conftest import make_checkpoint, make_image  # noqa: E402
from glassdetect.cli import app as cli  # noqa: E402
from glassdetect.inference.api import Detector  # noqa: E402
from glassdetect.service.auth import Tokens, exposure_warning, is_loopback  # noqa: E402
from glassdetect.service.batcher import BatchConfig  # noqa: E402
from glassdetect.service.ops import JsonFormatter, OpsConfig, RateLimiter, Trace, log_config  # noqa: E402
from glassdetect.service.serve import create_app  # noqa: E402

ALICE, BOB = "alice-0123456789abcdef", "b0b-fedcba9876543210"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ops") / "ckpt", 3, k=2, patch=64, global_size=64)


@pytest.fixture(scope="module")
def det(ckpt):
    return Detector.from_pretrained(ckpt, "cpu")


@pytest.fixture(scope="module")
def jpeg(tmp_path_factory):
    p = tmp_path_factory.mktemp("ops_img") / "photo.jpg"
    make_image(p, 200, 260, seed=7)
    return p.read_bytes()


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    f = tmp_path_factory.mktemp("tokens") / "tokens.txt"
    f.write_text(f"# who may use the service\nalice:{ALICE}\n\n{BOB}  # a token without a name\n")
    return Tokens.load(f, env=None)


def post(client, data, headers=None, name="x.jpg"):
    return client.post("/v1/detect", files={"file": (name, data, "image/jpeg")}, headers=headers or {})


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def metric(text: str, name: str, **labels) -> float:
    """The value of one sample in Prometheus text (0 when absent), parsed by prometheus_client's parser."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


# ------------------------------------------------------------------------------ access control

def test_tokens_file_and_env(tmp_path, monkeypatch, tokens):
    assert set(tokens.by_name) == {"alice", next(n for n in tokens.by_name if n.startswith("token-"))}
    assert tokens.check(f"Bearer {ALICE}") == "alice" and tokens.check(f"bearer  {BOB} ").startswith("token-")
    for wrong in (None, "", ALICE, f"Basic {ALICE}", f"Bearer {ALICE}x", f"Bearer {ALICE[:-1]}", "Bearer "):
        assert tokens.check(wrong) is None, wrong
    monkeypatch.setenv("GLASSDETECT_TOKENS", f"carol:{'c' * 20}, {'d' * 24}")
    both = Tokens.load(None)
    assert len(both.by_name) == 2 and both.check("Bearer " + "c" * 20) == "carol"
    (tmp_path / "short.txt").write_text("tooshort\n")
    with pytest.raises(ValueError, match=r"short\.txt, entry 1: a token must be at least 16"):
        Tokens.load(tmp_path / "short.txt", env=None)
    with pytest.raises(ValueError, match="cannot read the token file"):
        Tokens.load(tmp_path / "nope.txt", env=None)
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ValueError, match="holds no token"):
        Tokens.load(tmp_path / "empty.txt", env=None)


def test_401_without_or_with_a_wrong_token_200_with_the_right_one(det, jpeg, tokens):
    app = create_app(det, ops=OpsConfig(tokens=tokens), batch=BatchConfig(max_batch=1))
    with TestClient(app) as c:
        for headers in ({}, bearer("not-the-token-at-all"), bearer(ALICE + "0"), {"Authorization": ALICE}):
            r = post(c, jpeg, headers)
            assert r.status_code == 401 and r.json()["error"] == "unauthorized", headers
            assert r.headers["www-authenticate"] == "Bearer" and "x-request-id" in r.headers
        assert c.get("/metrics").status_code == 401 and c.get("/openapi.json").status_code == 401
        for open_path in ("/healthz", "/readyz", "/"):
            assert c.get(open_path).status_code in (200, 503), open_path  # /readyz: 503 while warming
        assert "const AUTH = true" in c.get("/").text and 'id="token"' in c.get("/").text
        ok = post(c, jpeg, bearer(ALICE))
        assert ok.status_code == 200 and 0 <= ok.json()["fake_probability"] <= 1
        assert post(c, jpeg, bearer(BOB)).status_code == 200
        text = c.get("/metrics", headers=bearer(ALICE)).text
    assert metric(text, "glassdetect_token_requests_total", token="alice") == 1  # /metrics itself counts after
    assert sum(metric(text, "glassdetect_token_requests_total", token=n) for n in tokens.by_name) == 2
    assert metric(text, "glassdetect_rejections_total", reason="401") == 6
    assert ALICE not in text and BOB not in text  # names, never the tokens


def test_open_by_default_and_the_warning_off_loopback(tokens):
    assert not OpsConfig().tokens.enabled
    assert exposure_warning("127.0.0.1", Tokens()) is None and exposure_warning("::1", Tokens()) is None
    assert exposure_warning("localhost", Tokens()) is None and exposure_warning("0.0.0.0", tokens) is None
    for host in ("0.0.0.0", "192.168.1.20", "::", "myhost.example"):
        msg = exposure_warning(host, Tokens())
        assert msg and "without access control" in msg and "--token-file" in msg, host
    assert is_loopback("127.0.0.5") and not is_loopback("10.0.0.1")


# ------------------------------------------------------------------------------ metrics, ids, logs

def test_metrics_parse_and_count_a_request(det, jpeg):
    app = create_app(det, batch=BatchConfig(max_batch=1))
    with TestClient(app) as c:
        before = c.get("/metrics").text
        assert post(c, jpeg).status_code == 200 and post(c, b"not an image").status_code == 415
        r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"glassdetect_requests", "glassdetect_prepare_seconds", "glassdetect_queue_wait_seconds",
            "glassdetect_forward_seconds", "glassdetect_batch_size", "glassdetect_in_flight", "glassdetect_rejections",
            "glassdetect_model_info", "glassdetect_build_info", "glassdetect_ready", "process_resident_memory_bytes"} <= names
    ok = lambda t: metric(t, "glassdetect_requests_total", route="/v1/detect", status="200")  # noqa: E731
    assert ok(before) == 0 and ok(text) == 1
    assert metric(text, "glassdetect_rejections_total", reason="415") == 1
    assert metric(text, "glassdetect_forward_seconds_count") >= 1 and metric(text, "glassdetect_batch_size_count") >= 1
    assert metric(text, "glassdetect_prepare_seconds_count") == 1  # the refused bytes never reached the views
    assert metric(text, "glassdetect_model_info", backbone=det.cfg.backbone, k="2", local_depth="0") == 1
    assert metric(text, "glassdetect_ready") == 1 and metric(text, "glassdetect_in_flight") == 0


def test_request_id_round_trip(det, jpeg):
    with TestClient(create_app(det, batch=BatchConfig(max_batch=1))) as c:
        r = post(c, jpeg, {"X-Request-ID": "lb-7f3a:42"})
        assert r.status_code == 200 and r.headers["x-request-id"] == "lb-7f3a:42"
        made = post(c, b"", {"X-Request-ID": "bad id with spaces"})  # refused ids are replaced
        assert made.status_code == 415 and len(made.headers["x-request-id"]) == 32
        assert c.get("/healthz").headers["x-request-id"] != c.get("/healthz").headers["x-request-id"]
        too_big = c.post("/v1/detect", content=b"0" * (21 * 2**20), headers={"X-Request-ID": "big-1"})
        assert too_big.status_code == 413 and too_big.headers["x-request-id"] == "big-1"


def test_one_json_log_line_per_request(det, jpeg, caplog):
    app = create_app(det, ops=OpsConfig(log_requests=True), batch=BatchConfig(max_batch=2))
    with caplog.at_level(logging.INFO, logger="glassdetect.service.access"), TestClient(app) as c:
        assert post(c, jpeg, {"X-Request-ID": "req-1"}, name="secret-name.jpg").status_code == 200
        assert post(c, b"GIF89a broken", {"X-Request-ID": "req-2"}).status_code in (415, 422)
    records = [r for r in caplog.records if r.name == "glassdetect.service.access"]
    lines = [json.loads(JsonFormatter().format(r)) for r in records]
    by_id = {line["request_id"]: line for line in lines}
    ok, bad = by_id["req-1"], by_id["req-2"]
    assert ok["status"] == 200 and ok["route"] == "/v1/detect" and ok["image_size"] == [200, 260]
    assert ok["decision"] in ("real", "fake", "unsure") and 0 <= ok["fake_probability"] <= 1 and ok["format"] == "JPEG"
    assert ok["prepare_ms"] > 0 and ok["forward_ms"] > 0 and ok["queue_ms"] >= 0 and ok["batch"] == 1
    assert ok["duration_ms"] >= ok["forward_ms"] and ok["body_bytes"] > len(jpeg)  # the form around the file
    assert bad["status"] in (415, 422) and bad["error"] and bad["decision"] is None
    text = "\n".join(map(json.dumps, lines))
    assert "secret-name" not in text and "evidence" not in text  # never the image or its name
    assert log_config("json", "info")["loggers"]["glassdetect.service.access"]["handlers"] == ["json"]
    with pytest.raises(ValueError, match="log format"):
        log_config("xml", "info")


# ------------------------------------------------------------------------------ overload, readiness

def test_rate_limit_429_per_client(det, jpeg, tokens):
    app = create_app(det, ops=OpsConfig(tokens=tokens, rate_limit=0.2, rate_burst=2), batch=BatchConfig(max_batch=1))
    with TestClient(app) as c:
        got = [post(c, jpeg, bearer(ALICE)).status_code for _ in range(3)]
        assert got == [200, 200, 429]
        limited = post(c, jpeg, bearer(ALICE))
        assert limited.status_code == 429 and limited.json()["error"] == "rate_limited"
        assert 1 <= int(limited.headers["retry-after"]) <= 5
        assert post(c, jpeg, bearer(BOB)).status_code == 200  # another token: its own bucket
        assert c.get("/healthz").status_code == 200  # only /v1/detect is limited
        text = c.get("/metrics", headers=bearer(BOB)).text
    assert metric(text, "glassdetect_rejections_total", reason="429") == 2


def test_rate_limiter_refills():
    lim = RateLimiter(rate=2.0, burst=2)
    assert [lim.take("a", 0.0), lim.take("a", 0.0)] == [0, 0]
    assert lim.take("a", 0.0) == pytest.approx(0.5) and lim.take("a", 0.5) == 0  # one token back after 0.5 s
    assert lim.take("b", 0.5) == 0  # clients apart
    small = RateLimiter(1.0, 1, max_clients=2)
    for key in "xyz":
        small.take(key, 0.0)
    assert len(small._buckets) == 2 and "x" not in small._buckets
    with pytest.raises(ValueError, match="rate_limit"):
        OpsConfig(rate_limit=-1)


class _SlowDetector(Detector):
    def run_batch(self, batch):
        time.sleep(1.0)
        return super().run_batch(batch)


def test_readyz_waits_for_the_warm_up_and_the_request_deadline(ckpt, jpeg):
    slow = _SlowDetector.from_pretrained(ckpt, "cpu")
    app = create_app(slow, ops=OpsConfig(request_timeout_s=0.3), batch=BatchConfig(max_batch=1))
    svc = app.state.service
    with TestClient(app) as c:
        first = c.get("/readyz")  # the warm-up pass (1 s) is still running
        assert first.status_code == 503 and first.json()["status"] == "warming"
        while c.get("/readyz").status_code != 200:
            time.sleep(0.05)
        assert c.get("/healthz").json()["ready"] == "ready"
        late = post(c, jpeg)  # the forward pass takes longer than the deadline
        assert late.status_code == 503 and late.json()["error"] == "timeout" and late.headers["retry-after"] == "1"
        svc.readiness.drain()
        assert c.get("/readyz").status_code == 503 and c.get("/readyz").json()["status"] == "draining"


def test_no_warm_up_is_ready_at_once(det):
    with TestClient(create_app(det, warm=False)) as c:
        assert c.get("/readyz").json() == {"status": "ready"}


def test_a_stalled_upload_gets_408(det):
    app = create_app(det, ops=OpsConfig(request_timeout_s=0.3), batch=BatchConfig(max_batch=1))

    async def main():
        sent = []

        async def receive():
            if not sent:
                sent.append(1)
                return {"type": "http.request", "body": b"\xff\xd8\xff", "more_body": True}
            await asyncio.sleep(30)  # the rest never comes

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/v1/detect", "raw_path": b"/v1/detect",
                 "query_string": b"", "headers": [(b"content-type", b"image/jpeg")], "client": ("127.0.0.1", 5),
                 "server": ("127.0.0.1", 80), "scheme": "http", "http_version": "1.1", "root_path": "",
                 "app": app, "state": {}}
        await asyncio.wait_for(app(scope, receive, send), 10)
        return [m for m in sent if isinstance(m, dict)]

    messages = asyncio.run(main())
    start = next(m for m in messages if m["type"] == "http.response.start")
    body = json.loads(b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body"))
    assert start["status"] == 408 and body["error"] == "request_timeout"


def test_trace_log_fields():
    t = Trace("id-1", "POST", "/v1/other", prepare_s=0.0123)
    line = t.to_log(0.5)
    assert line["route"] == "other" and line["prepare_ms"] == 12.3 and line["duration_ms"] == 500.0


# ------------------------------------------------------------------------------ the CLI

@pytest.mark.parametrize("missing", ["fastapi", "prometheus_client"])
def test_the_missing_extra_message_names_the_extra_literally(ckpt, monkeypatch, missing):
    import glassdetect

    monkeypatch.setattr(glassdetect, "service", glassdetect.service)  # the re-import below rebinds it
    for mod in [m for m in sys.modules if m.startswith("glassdetect.service")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, missing, None)  # as if it were not installed
    r = CliRunner().invoke(cli, ["serve", str(ckpt)])
    said = " ".join(r.output.split())
    assert r.exit_code == 2 and f"{missing} is missing: pip install 'glassdetect[serve]'" in said, r.output


def test_fail_prints_messages_literally(capsys):
    import typer

    from glassdetect.cli._app import fail

    with pytest.raises(typer.Exit):
        fail("see [bold]x[/bold] and glassdetect[ray] in /tmp/[a]")
    err = capsys.readouterr().err
    assert "see [bold]x[/bold] and glassdetect[ray] in /tmp/[a]" in " ".join(err.split()) and err.startswith("error:")


def test_serve_cli_checks_its_options(ckpt, tmp_path):
    r = CliRunner().invoke(cli, ["serve", str(ckpt), "--token-file", str(tmp_path / "none.txt")])
    assert r.exit_code == 2 and "cannot read the token file" in r.output
    r = CliRunner().invoke(cli, ["serve", str(ckpt), "--rate-limit", "-3"])
    assert r.exit_code == 2 and "rate_limit" in r.output
    r = CliRunner().invoke(cli, ["serve", str(ckpt), "--log-format", "xml", "--host", "0.0.0.0"])
    assert r.exit_code == 2 and "log format must be text or json" in r.output
    assert "without access control" in " ".join(r.output.split())  # printed before anything else runs


def test_the_upload_page_asks_for_the_token_in_a_real_browser(det, jpeg, tokens, tmp_path):
    from pathlib import Path

    from glassdetect.bench.serve import serving

    if not Path("/usr/bin/chromium").exists():
        pytest.skip("/usr/bin/chromium is missing (Debian package 'chromium'; `make install` installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the 'playwright' Python package is not installed")
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(jpeg)
    app = create_app(det, ops=OpsConfig(tokens=tokens), batch=BatchConfig(max_batch=1))
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run", "--disable-quic"]
    with serving(app) as base, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=args, headless=True, timeout=60_000)
        try:
            page = browser.new_page()
            page.goto(base + "/", timeout=30_000)
            assert page.is_visible("#token")  # the page knows the service wants a token
            page.set_input_files("#file", str(photo))
            page.click("#submit")  # no token yet: a readable 401
            page.wait_for_selector("#error:not([hidden])", timeout=30_000)
            assert "access token" in page.text_content("#error") and page.is_hidden("#result")
            page.fill("#token", ALICE)
            page.click("#submit")
            page.wait_for_selector("#result:not([hidden])", timeout=30_000)
            assert page.text_content("#verdict").strip().lower() in ("real", "fake", "unsure")
            assert page.evaluate("sessionStorage.getItem('glassdetect-token')") == ALICE
        finally:
            browser.close()
