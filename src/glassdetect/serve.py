"""HTTP service: ``glassdetect serve CKPT`` (FastAPI + uvicorn; ``pip install 'glassdetect[serve]'``).

Endpoints
    ``POST /v1/detect``  an image as multipart form field ``file`` (optional form field or query
                         parameter ``explain=true`` adds the evidence map as a PNG data URL), or
                         as the raw request body -> JSON verdict.
    ``GET /healthz``     liveness plus what model is loaded.
    ``GET /``            a small page: upload an image, see the verdict and the evidence map.

Bad input never produces a 500: a body over ``max_bytes`` -> 413, bytes that are not an image
-> 415, an image over ``max_pixels`` or one that cannot be decoded -> 422, a missing field or
malformed form -> 400/422, too many requests waiting -> 503. The model is loaded once; inference
runs in worker threads (at most ``concurrency`` at a time) so the event loop keeps serving.
"""
from __future__ import annotations

import copy
import functools
import io
import json
import logging
import time
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image, UnidentifiedImageError
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import __version__
from .api import Detector
from .explain import data_url
from .limits import SERVE_MAX_PIXELS
from .pilguard import identify
from .views import ImageError

log = logging.getLogger("glassdetect.serve")

DEFAULT_MAX_BYTES = 20 * 1024 * 1024
# The pixel limit of uploads defaults to SERVE_MAX_PIXELS (glassdetect.limits): a service setting,
# smaller than the library's DEFAULT_MAX_PIXELS because anyone may upload.
FORM_OVERHEAD = 64 * 1024  # multipart boundaries and small fields on top of the file itself
TRUE = {"1", "true", "yes", "on"}


class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: refuse bodies over ``limit`` bytes with 413, by Content-Length or while streaming."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await _send_json(send, 413, _too_large(self.limit))
        seen = 0
        started = False

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _BodyTooLarge:
            if not started:
                await _send_json(send, 413, _too_large(self.limit))


def _too_large(limit: int) -> dict:
    return {"error": "payload_too_large", "detail": f"the upload exceeds {limit / 2**20:.1f} MiB"}


async def _send_json(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": data})


def _error(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status)


def sniff(data: bytes) -> tuple[str, tuple[int, int]] | None:
    """(format, (width, height)) from the image header, or None when the bytes are not an image.

    The header only, without Pillow's process-wide decompression-bomb guard: the caller applies the
    service's own pixel limit to the size (422 with its own message).
    """
    try:
        with identify(io.BytesIO(data)) as img:
            return str(img.format), img.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    except Exception:  # noqa: BLE001 - any parser surprise on hostile bytes means "not an image we can use"
        return None


class _Refused(Exception):
    """An answer other than the verdict (4xx/503), raised from the steps of :meth:`_Service.detect`."""

    def __init__(self, response: JSONResponse):
        super().__init__(response.status_code)
        self.response = response


# The request body of POST /v1/detect, for the OpenAPI page (the route reads the request itself).
DETECT_BODY_DOC = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary"}, "explain": {"type": "boolean", "default": False}}}},
    "image/*": {"schema": {"type": "string", "format": "binary"}},
}}}


def create_app(
    detector: Detector | str | Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = SERVE_MAX_PIXELS,
    concurrency: int = 2,
    max_waiting: int = 64,
    explain_size: int = 640,
    device: str = "auto",
) -> FastAPI:
    """The FastAPI app around one shared :class:`Detector` (loaded here when given a path).

    A detector passed in is left as it is: the app uses a copy (sharing the model) with the service's
    pixel limit.
    """
    det = copy.copy(detector) if isinstance(detector, Detector) else Detector.from_pretrained(detector, device)
    det.max_pixels = int(max_pixels)
    svc = _Service(det, max_bytes=max_bytes, max_pixels=max_pixels, concurrency=concurrency,
                   max_waiting=max_waiting, explain_size=explain_size)

    app = FastAPI(title="glassdetect", version=__version__,
                  description="Is this image AI-generated? GLASS: global view + native-resolution crops.")
    app.add_middleware(BodyLimit, limit=max_bytes + FORM_OVERHEAD)
    app.state.detector = det

    @app.get("/healthz")
    async def healthz() -> dict:
        return svc.health()

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(INDEX_HTML.replace("{{MAX_MB}}", f"{max_bytes / 2**20:.0f}"))

    @app.post("/v1/detect", openapi_extra=DETECT_BODY_DOC)
    async def detect(request: Request, explain: bool = False) -> JSONResponse:
        """Upload one image (form field ``file`` or the raw body); returns the verdict as JSON."""
        return await svc.detect(request, explain)

    return app


class _Service:
    """The detector behind the routes, the upload limits, and the in-flight / served counters."""

    def __init__(self, det: Detector, *, max_bytes: int, max_pixels: int, concurrency: int, max_waiting: int,
                 explain_size: int):
        self.det = det
        self.max_bytes, self.max_pixels, self.max_waiting = max_bytes, max_pixels, max_waiting
        self.explain_size = explain_size
        self.limiter = anyio.CapacityLimiter(max(1, int(concurrency)))
        self.in_flight = self.served = 0
        cfg = det.cfg
        self.model_info = {
            "arch": cfg.arch, "backbone": cfg.backbone, "k": cfg.k, "patch": cfg.patch,
            "sampling": det.mode or cfg.sampling, "draws": det.draws, "temperature": cfg.temperature,
            "threshold": det.threshold, "unsure_band": det.unsure_band, "class_names": list(cfg.class_names),
        }

    def health(self) -> dict:
        return {"status": "ok", "version": __version__, "model": self.model_info, "in_flight": self.in_flight,
                "served": self.served}

    async def detect(self, request: Request, explain: bool) -> JSONResponse:
        """Read the upload, check it against the limits, run the model: the verdict, or why not."""
        try:
            data, name, explain = await _read_upload(request, explain, self.max_bytes)
            fmt = self.check_limits(data)
            out = await self.infer(data, explain, name)
        except _Refused as refused:
            return refused.response
        out["format"] = fmt
        return JSONResponse(out)

    def check_limits(self, data: bytes) -> str:
        """The image format, once the bytes pass the size, format, pixel and queue limits."""
        if len(data) > self.max_bytes:
            raise _Refused(JSONResponse(_too_large(self.max_bytes), status_code=413))
        if not data:
            raise _Refused(_error(415, "not_an_image", "the upload is empty"))
        head = sniff(data)
        if head is None:
            raise _Refused(_error(415, "not_an_image", "the uploaded bytes are not an image format we can read"))
        fmt, (w, h) = head
        if w * h > self.max_pixels:
            raise _Refused(_error(422, "too_many_pixels",
                                  f"{w}×{h} = {w * h:,} pixels exceeds the limit of {self.max_pixels:,} pixels"))
        if self.in_flight >= self.max_waiting:
            raise _Refused(JSONResponse({"error": "busy", "detail": "too many requests in progress; retry shortly"},
                                        status_code=503, headers={"Retry-After": "1"}))
        return fmt

    async def infer(self, data: bytes, explain: bool, name: str) -> dict[str, Any]:
        """:meth:`run` in a worker thread (at most ``concurrency`` at a time); a bad image is a 422."""
        self.in_flight += 1
        try:
            out = await anyio.to_thread.run_sync(functools.partial(self.run, data, explain, name),
                                                 limiter=self.limiter)
        except ImageError as exc:
            raise _Refused(_error(422, "cannot_decode", exc.reason)) from None
        except (ValueError, OSError) as exc:
            raise _Refused(_error(422, "cannot_decode", str(exc))) from None
        except Exception:  # noqa: BLE001 - a bug, not bad input: log it, answer 500 without internals
            log.exception("inference failed for %s", name)
            raise _Refused(_error(500, "internal_error", "inference failed; see the server log")) from None
        finally:
            self.in_flight -= 1
        self.served += 1
        return out

    def run(self, data: bytes, explain: bool, name: str) -> dict[str, Any]:
        """The verdict as JSON (blocking: runs in a worker thread)."""
        det = self.det
        t0 = time.perf_counter()
        r = det.predict(data, explain=explain, name=name, thumbnail=self.explain_size)
        out = r.to_dict()
        for key in ("source", "error"):
            out.pop(key, None)
        out["filename"] = name
        out["threshold"] = det.threshold
        out["unsure_band"] = list(det.unsure_band) if det.unsure_band else None
        if explain:
            out["evidence_map"] = data_url(r.evidence_map())
        out["elapsed_ms"] = round((time.perf_counter() - t0) * 1000, 2)
        return out


async def _read_upload(request: Request, explain: bool, max_bytes: int) -> tuple[bytes, str, bool]:
    """(bytes, file name, explain) from a multipart form (field ``file``; a form field ``explain``
    overrides the query parameter) or from the raw body."""
    name = "upload"
    try:
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return await request.body(), name, explain
        async with request.form(max_files=1, max_fields=16) as form:
            up = form.get("file")
            if up is None or isinstance(up, str):
                raise _Refused(_error(422, "missing_file", "send the image as the multipart form field 'file'"))
            data = await up.read()
            name = up.filename or name
            flag = form.get("explain")
            if isinstance(flag, str):
                explain = flag.strip().lower() in TRUE
        return data, name, explain
    except _BodyTooLarge:
        raise _Refused(JSONResponse(_too_large(max_bytes), status_code=413)) from None
    except StarletteHTTPException as exc:  # malformed multipart
        raise _Refused(_error(400, "bad_request", str(exc.detail))) from None


def serve(
    checkpoint: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    device: str = "auto",
    threads: int = 0,
    concurrency: int = 2,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = SERVE_MAX_PIXELS,
    threshold: float | None = None,
    unsure: Any = False,
    draws: int = 1,
    mode: str | None = None,
    log_level: str = "info",
    access_log: bool = True,
) -> None:
    """Load the checkpoint once and serve it with uvicorn until interrupted."""
    import uvicorn

    from .runtime import configure_threads

    configure_threads(threads)
    det = Detector.from_pretrained(checkpoint, device, threshold=threshold, unsure_band=unsure, draws=draws, mode=mode)
    app = create_app(det, max_bytes=max_bytes, max_pixels=max_pixels, concurrency=concurrency)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log)


INDEX_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>glassdetect — is this image AI-generated?</title>
<style>
  :root { --bg:#f6f7f9; --card:#fff; --ink:#1d2330; --muted:#667085; --line:#e4e7ec;
          --fake:#c2410c; --real:#15803d; --unsure:#a16207; --accent:#2f54eb; }
  * { box-sizing: border-box; }
  body { margin:0; font:16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; background:var(--bg); color:var(--ink); }
  main { max-width: 860px; margin: 0 auto; padding: 32px 20px 48px; }
  h1 { font-size: 1.5rem; margin: 0 0 4px; }
  p.lead { margin: 0 0 24px; color: var(--muted); }
  .card { background:var(--card); border:1px solid var(--line); border-radius:12px; padding:20px; margin-bottom:20px; }
  #drop { display:block; border:2px dashed var(--line); border-radius:10px; padding:28px; text-align:center; color:var(--muted); cursor:pointer; }
  #drop.over { border-color: var(--accent); color: var(--accent); }
  #drop strong { color: var(--ink); }
  .row { display:flex; gap:12px; align-items:center; margin-top:14px; flex-wrap:wrap; }
  button { font:inherit; background:var(--accent); color:#fff; border:0; border-radius:8px; padding:9px 18px; cursor:pointer; }
  button:disabled { opacity:.5; cursor:default; }
  #filename { color: var(--muted); font-size: .95rem; }
  #verdict { display:inline-block; font-weight:700; font-size:1.25rem; text-transform:uppercase; letter-spacing:.04em;
             padding:4px 14px; border-radius:999px; color:#fff; background:var(--muted); }
  #verdict.fake { background:var(--fake); } #verdict.real { background:var(--real); } #verdict.unsure { background:var(--unsure); }
  .bar { height:10px; background:var(--line); border-radius:999px; overflow:hidden; margin:10px 0 4px; }
  .bar > div { height:100%; background:linear-gradient(90deg, var(--real), var(--unsure), var(--fake)); }
  #evidence { max-width:100%; border-radius:8px; border:1px solid var(--line); margin-top:14px; display:block; }
  .muted { color: var(--muted); font-size: .92rem; }
  #error { color: var(--fake); font-weight:600; }
  table { border-collapse: collapse; width:100%; margin-top:12px; font-size:.92rem; }
  th, td { text-align:left; padding:4px 8px; border-bottom:1px solid var(--line); }
  [hidden] { display:none !important; }
</style>
</head>
<body>
<main>
  <h1>Is this image AI-generated?</h1>
  <p class="lead">GLASS looks at the whole picture and at a few crops at full resolution, where generators leave traces.</p>
  <form id="form" class="card">
    <label id="drop" for="file"><strong>Choose an image</strong> or drop it here<br>
      <span class="muted">JPEG, PNG, WebP … up to {{MAX_MB}} MB</span></label>
    <input id="file" name="file" type="file" accept="image/*" hidden>
    <div class="row">
      <button id="submit" type="submit" disabled>Analyse</button>
      <span id="filename"></span>
    </div>
  </form>
  <p id="status" class="muted" hidden>Analysing…</p>
  <p id="error" role="alert" hidden></p>
  <section id="result" class="card" hidden aria-live="polite">
    <div class="row" style="margin-top:0">
      <span id="verdict"></span>
      <span>fake probability <strong id="probability"></strong></span>
    </div>
    <div class="bar"><div id="probbar" style="width:0"></div></div>
    <p class="muted" id="summary"></p>
    <img id="evidence" alt="Evidence map: the crops the model analysed, shaded by attention and labelled with each crop's own fake score">
    <p class="muted">Each box is a crop the model saw at native resolution: the more opaque, the more attention it
      received; the label is the fake probability the model would give if it looked at that crop alone (with the whole image).</p>
    <table id="crops"><thead><tr><th>crop box (x0, y0, x1, y1)</th><th>attention</th><th>crop score</th></tr></thead><tbody></tbody></table>
  </section>
</main>
<script>
const $ = (id) => document.getElementById(id);
const input = $("file"), drop = $("drop"), submit = $("submit");
function chosen() {
  const f = input.files[0];
  $("filename").textContent = f ? f.name : "";
  submit.disabled = !f;
}
input.addEventListener("change", chosen);
["dragenter", "dragover"].forEach(e => drop.addEventListener(e, ev => { ev.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach(e => drop.addEventListener(e, ev => { ev.preventDefault(); drop.classList.remove("over"); }));
drop.addEventListener("drop", ev => { if (ev.dataTransfer.files.length) { input.files = ev.dataTransfer.files; chosen(); } });
$("form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const f = input.files[0];
  if (!f) return;
  const body = new FormData();
  body.append("file", f);
  body.append("explain", "true");
  submit.disabled = true; $("status").hidden = false; $("error").hidden = true; $("result").hidden = true;
  try {
    const res = await fetch("v1/detect", { method: "POST", body });
    const data = await res.json().catch(() => ({ detail: res.statusText }));
    if (!res.ok) throw new Error(data.detail || ("HTTP " + res.status));
    show(data);
  } catch (err) {
    $("error").textContent = "Could not analyse this file: " + err.message;
    $("error").hidden = false;
  } finally {
    submit.disabled = false; $("status").hidden = true;
  }
});
function show(d) {
  const v = $("verdict");
  v.textContent = d.decision; v.className = d.decision;
  const p = d.fake_probability;
  $("probability").textContent = (100 * p).toFixed(1) + "%";
  $("probbar").style.width = (100 * p).toFixed(1) + "%";
  const [h, w] = d.image_size;
  $("summary").textContent = `${w}×${h} px · ${d.crops.length} crop(s) · threshold ${d.threshold}` +
    (d.unsure_band ? ` · unsure between ${d.unsure_band[0]} and ${d.unsure_band[1]}` : "") + ` · ${d.elapsed_ms} ms`;
  $("evidence").src = d.evidence_map || "";
  const tbody = $("crops").querySelector("tbody");
  tbody.replaceChildren(...[...d.crops].sort((a, b) => b.weight - a.weight).map(c => {
    const tr = document.createElement("tr");
    for (const t of [c.box.join(", "), c.weight.toFixed(3), c.score.toFixed(3)]) {
      const td = document.createElement("td"); td.textContent = t; tr.appendChild(td);
    }
    return tr;
  }));
  $("result").hidden = false;
}
</script>
</body>
</html>
"""
