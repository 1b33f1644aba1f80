"""The upload page of ``glassdetect serve`` (``GET /``): choose or drop an image, see the verdict,
the probability and the evidence map. With access control the page asks for the access token (kept
in the tab's session storage) and sends it as ``Authorization: Bearer``; a 401 asks again.
:func:`render_page` fills in ``{{MAX_MB}}`` (the upload limit) and ``{{AUTH}}``."""


def render_page(max_bytes: int, auth: bool) -> str:
    """The page for an upload limit of ``max_bytes``; ``auth``: the service wants a token."""
    return INDEX_HTML.replace("{{MAX_MB}}", f"{max_bytes / 2**20:.0f}").replace("{{AUTH}}", "true" if auth else "false")


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
    <div class="row" id="tokenrow" hidden>
      <label for="token">Access token</label>
      <input id="token" type="password" autocomplete="off" placeholder="paste the token you were given" size="36">
    </div>
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
const AUTH = {{AUTH}};
const token = $("token");
token.value = sessionStorage.getItem("glassdetect-token") || "";
$("tokenrow").hidden = !AUTH;
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
    const headers = {};
    if (token.value.trim()) {
      headers["Authorization"] = "Bearer " + token.value.trim();
      sessionStorage.setItem("glassdetect-token", token.value.trim());
    }
    const res = await fetch("v1/detect", { method: "POST", body, headers });
    const data = await res.json().catch(() => ({ detail: res.statusText }));
    if (res.status === 401) { $("tokenrow").hidden = false; token.focus(); }
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
