"""Resumable, sharded `glassdetect predict` and `glassdetect merge`: a run killed mid-batch resumes to
the same output as an uninterrupted one; shards partition the inputs by path; merge finds missing,
duplicated and cut-short parts; a list of a million paths is streamed in bounded memory."""
import csv
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import make_checkpoint, make_image
from typer.testing import CliRunner

from glassdetect.cli import app
from glassdetect.inference.predict import COLUMNS, Scan, expand_inputs, predict, walk_images
from glassdetect.inference.shards import (
    Shard,
    merge_parts,
    open_output,
    parse_shard,
    part_path,
    resolve_shard,
    scan_output,
    shard_from_env,
)

FAST = ["--workers", "0", "--threads", "1", "--quiet", "--device", "cpu"]
ENV_VARS = ("RANK", "WORLD_SIZE", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN",
            "SLURM_ARRAY_TASK_STEP")
N_IMAGES = 40


@pytest.fixture(autouse=True)
def _single_process_env(monkeypatch):
    for name in ENV_VARS:  # a test suite run inside a Slurm array must not shard these runs
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("shards") / "ckpt", 1, k=2, patch=96, global_size=96)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs40")
    for i in range(N_IMAGES):
        make_image(d / f"g{i % 3}" / f"im{i:02d}.{'png' if i % 2 else 'jpg'}", 200 + 8 * i, 240, seed=i)
    return d


def cli(*args):
    return CliRunner().invoke(app, [*map(str, args)])


def data_rows(path):
    return list(csv.DictReader(io.StringIO(Path(path).read_text())))


# ------------------------------------------------------------------------------------ shards

def test_shards_partition_by_path_stably():
    paths = [f"/archive/{i % 97}/img{i:06d}.jpg" for i in range(6000)]
    for n in (1, 3, 8):
        owned = [{p for p in paths if Shard(i, n).owns(p)} for i in range(n)]
        assert set().union(*owned) == set(paths) and sum(map(len, owned)) == len(paths)  # union = input, no overlap
        assert min(map(len, owned)) > 0.8 * len(paths) / n  # roughly balanced
        relisted = paths[::-1] + [f"/new/{i}.jpg" for i in range(500)]
        random.Random(n).shuffle(relisted)
        for i in range(n):  # re-ordered and extended listing: every old path stays in its shard
            keys = list(Scan(shard=Shard(i, n)).keys(map(Path, relisted), {}))
            assert {p for _, p in keys} & set(paths) == owned[i]
            assert [pos for pos, _ in keys] == sorted(pos for pos, _ in keys)


def test_shard_options_and_environment():
    assert parse_shard("3/8") == Shard(3, 8)
    for bad in ("8/8", "-1/4", "1-4", "x"):
        with pytest.raises(ValueError):
            parse_shard(bad)
    assert shard_from_env({}) is None and shard_from_env({"WORLD_SIZE": "1", "RANK": "0"}) is None
    assert shard_from_env({"WORLD_SIZE": "4", "RANK": "2"}) == Shard(2, 4)
    one_based = {"SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_ID": "8", "SLURM_ARRAY_TASK_MIN": "1"}
    assert shard_from_env(one_based) == Shard(7, 8)
    stepped = {"SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MIN": "0",
               "SLURM_ARRAY_TASK_STEP": "2"}
    assert shard_from_env(stepped) == Shard(2, 3)
    both = {"SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_ID": "1", "WORLD_SIZE": "2", "RANK": "1"}
    assert shard_from_env(both) == Shard(3, 6)  # task 1 of 3, rank 1 of 2
    assert "SLURM" in shard_from_env(both).source and "RANK" in str(shard_from_env(both))
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        shard_from_env({"WORLD_SIZE": "four"})
    assert resolve_shard("off", {"WORLD_SIZE": "4", "RANK": "1"}) is None
    assert resolve_shard("auto", {"WORLD_SIZE": "4", "RANK": "1"}) == Shard(1, 4)
    assert part_path("out/scan.csv", Shard(3, 8)) == Path("out/scan.csv.part-00003-of-00008")
    assert part_path("scan.csv", None) == Path("scan.csv")


def test_folder_walk_streams_in_rglob_order(tmp_path):
    for rel in ("a.png", "a/b.jpg", "a-b/c.png", "a.b.png", "B.png", ".hidden.png", "a/z/x.PNG", "a/notes.txt",
                "b/a.webp", "ab.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    from glassdetect.data.splits import IMAGE_SUFFIXES

    expected = sorted(q for q in tmp_path.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file())
    assert list(walk_images(tmp_path)) == expected and expand_inputs([tmp_path]) == expected


# ------------------------------------------------------------------------------ kill + resume

def _kill_after_rows(cmd: list[str], out: Path, rows: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    for name in ENV_VARS:
        env.pop(name, None)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= rows + 1:
                break
            time.sleep(0.005)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the run and its DataLoader workers, mid-batch
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def test_sigkill_mid_run_then_resume_equals_an_uninterrupted_run(ckpt, images, tmp_path):
    full = tmp_path / "full.csv"
    r = cli("predict", ckpt, images, tmp_path / "gone.png", "--out", full, "--batch-size", "2", *FAST)
    assert r.exit_code == 1, r.output  # the missing file is an error row
    assert len(data_rows(full)) == N_IMAGES + 1

    cut = tmp_path / "cut.csv"
    base = [sys.executable, "-m", "glassdetect.cli", "predict", str(ckpt), str(images), str(tmp_path / "gone.png"),
            "--out", str(cut), "--batch-size", "2", "--workers", "2", "--threads", "1", "--device", "cpu", "--quiet"]
    _kill_after_rows(base, cut, rows=5)
    killed = cut.read_bytes()
    complete = killed[: killed.rfind(b"\n") + 1]
    assert full.read_bytes().startswith(complete)  # only whole, correct rows before any cut
    n_done = complete.count(b"\n") - 1
    assert 5 <= n_done < N_IMAGES
    with open(cut, "ab") as fh:  # and a torn write at the end, as a kill inside write(2) would leave
        fh.write(b"/some/half,0.12")
    r = cli("predict", ckpt, images, tmp_path / "gone.png", "--out", cut, "--batch-size", "2", "--resume", *FAST)
    assert r.exit_code == 1, r.output
    assert "partial last row cut away" in r.output and f"{n_done} row(s) already there" in r.output
    assert cut.read_bytes() == full.read_bytes()  # nothing lost, nothing twice, same order
    again = cli("predict", ckpt, images, "--out", cut, "--resume", *FAST)
    assert again.exit_code == 0 and "wrote 0 row(s)" in again.output and cut.read_bytes() == full.read_bytes()


def test_resume_jsonl_each_path_once_and_columns_must_match(ckpt, images, tmp_path):
    out = tmp_path / "out.jsonl"
    first = sorted(images.rglob("*.png"))[:3]
    assert cli("predict", ckpt, *first, "--out", out, "--format", "jsonl", *FAST).exit_code == 0
    r = cli("predict", ckpt, images, first[0], "--out", out, "--format", "jsonl", "--resume", *FAST)
    assert r.exit_code == 0, r.output
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(recs) == N_IMAGES and len({rec["path"] for rec in recs}) == N_IMAGES
    assert all(list(rec) == list(COLUMNS) for rec in recs)
    bad = cli("predict", ckpt, images, "--out", out, "--format", "jsonl", "--resume", "--dedupe", *FAST)
    assert bad.exit_code == 2 and "sha256" in bad.output
    assert cli("predict", ckpt, images, "--resume", *FAST).exit_code == 2  # nothing to resume on stdout


def test_dedupe_copies_a_known_content_without_scoring_it(ckpt, images, tmp_path):
    out = tmp_path / "out.csv"
    src = sorted(images.rglob("*.png"))[:4]
    assert cli("predict", ckpt, *src, "--out", out, "--dedupe", *FAST).exit_code == 0
    rows = data_rows(out)
    assert list(rows[0]) == [*COLUMNS, "sha256"] and all(len(r["sha256"]) == 64 for r in rows)
    moved = tmp_path / "moved" / "renamed.png"
    moved.parent.mkdir()
    shutil.copy(src[1], moved)
    # tamper with the stored score: a copied row shows it, a re-scored one would not
    text = out.read_text().replace(rows[1]["fake_probability"], "0.123456")
    out.write_text(text)
    r = cli("predict", ckpt, *src, moved, "--out", out, "--dedupe", "--resume", *FAST)
    assert r.exit_code == 0, r.output
    new = data_rows(out)[-1]
    assert new["path"] == str(moved) and new["fake_probability"] == "0.123456" and new["sha256"] == rows[1]["sha256"]
    # without a known hash the same file is scored, with the same score as under its first name
    fresh = list(predict(ckpt, [src[1], moved], workers=0, device="cpu", scan=Scan(hash_content=True)))
    assert fresh[0].fake_probability == fresh[1].fake_probability and fresh[0].sha256 == fresh[1].sha256


# ------------------------------------------------------------------------------ shard + merge

def test_sharded_parts_merge_to_the_single_run(ckpt, images, tmp_path, monkeypatch):
    single = tmp_path / "single.csv"
    missing = tmp_path / "missing.png"
    assert cli("predict", ckpt, images, missing, "--out", single, *FAST).exit_code == 1
    out = tmp_path / "scan.csv"
    for i in range(3):
        monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(i + 1))
        monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
        r = cli("predict", ckpt, images, missing, "--out", out, *FAST)
        assert f"shard {i}/3" in r.output and "SLURM" in r.output
    parts = sorted(tmp_path.glob("scan.csv.part-*"))
    assert [p.name for p in parts] == [f"scan.csv.part-0000{i}-of-00003" for i in range(3)]
    assert all(len(data_rows(p)) > 3 for p in parts)
    merged = tmp_path / "merged.csv"
    r = cli("merge", *parts, "--out", merged, "--inputs", images, "--inputs", missing)
    assert r.exit_code == 0, r.output
    got, want = (sorted(data_rows(f), key=lambda r: r["path"]) for f in (merged, single))
    def numbers(rows):
        return [float(r.pop(c) or -1) for r in rows for c in ("fake_probability", "spread")]

    assert numbers(got) == pytest.approx(numbers(want), abs=2e-6)  # other batch neighbours: last-digit float noise only
    assert got == want
    r = cli("merge", *parts[:2], "--out", tmp_path / "short.csv", "--inputs", images, "--inputs", missing)
    assert r.exit_code == 1 and "missing part(s) 00002 of 00003" in r.output and "without a row" in r.output
    assert not (tmp_path / "short.csv").exists()


def _part(path: Path, rows: list[str], tail: str = "") -> Path:
    path.write_text("path,fake_probability,decision,crops,draws,spread,error\n"
                    + "".join(f"{p},0.5,fake,2,1,0.0,\n" for p in rows) + tail)
    return path


def test_merge_finds_duplicates_missing_inputs_and_cut_parts(tmp_path):
    a = _part(tmp_path / "x.csv.part-00000-of-00002", ["a.jpg", "b.jpg"])
    b = _part(tmp_path / "x.csv.part-00001-of-00002", ["c.jpg", "b.jpg"], tail='"d.jpg,0.5')
    listing = tmp_path / "list.csv"
    listing.write_text("path\n" + "".join(f"{tmp_path / n}\n" for n in ("a.jpg", "e.jpg")))
    out = tmp_path / "merged.csv"
    r = cli("merge", a, b, "--out", out)
    assert r.exit_code == 1 and not out.exists()
    assert "b.jpg (2 rows)" in r.output and "partial row" in r.output
    report = merge_parts([a, b], out, ["a.jpg", "b.jpg", "c.jpg", "e.jpg"], force=True)
    assert not report.ok and report.n_duplicated == 1 and report.missing == ["e.jpg"] and report.rows == 4
    assert [r["path"] for r in data_rows(out)] == ["a.jpg", "b.jpg", "c.jpg", "b.jpg"]  # header once, cut row left out
    ok = merge_parts([_part(tmp_path / "y.csv", ["a.jpg", "c.jpg"])], tmp_path / "y_all.csv",
                     ["a.jpg", "c.jpg", "a.jpg"])  # an input listed twice needs one row
    assert ok.ok and ok.rows == 2
    r = cli("merge", tmp_path / "y.csv", "--out", tmp_path / "z.csv", "--inputs", listing)
    assert r.exit_code == 1 and "e.jpg" in r.output and "not in the inputs" in r.output


def test_open_output_cuts_only_a_partial_row(tmp_path):
    out = tmp_path / "o.csv"
    out.write_text('path,fake_probability,decision,crops,draws,spread,error\nok.png,0.1,real,2,1,0.0,\n'
                   'bad.png,,error,0,0,,"two\nlines"\nhalf.png,0.3')  # a quoted newline is not a row end
    ex = scan_output(out, "csv")
    assert ex.paths == {"ok.png", "bad.png"} and ex.partial
    sink, ex = open_output(out, "csv", COLUMNS, resume=True)
    sink.append("c.png,0.2,real,2,1,0.0,\n")
    sink.close()
    assert [r["path"] for r in data_rows(out)] == ["ok.png", "bad.png", "c.png"]
    out.write_text("path,fake_prob")  # not even a whole header: start over
    sink, ex = open_output(out, "csv", COLUMNS, resume=True)
    sink.close()
    assert out.read_text() == ",".join(COLUMNS) + "\n" and ex.rows == 0


# ------------------------------------------------------------------------------ a million paths

MEASURE = textwrap.dedent("""
    import resource, sys
    from glassdetect.cli import app
    try:
        app(sys.argv[1:], standalone_mode=False)
    except SystemExit:
        pass
    print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
""")
RSS_GROWTH_LIMIT_MB = 60  # a list of 1e6 paths held as Path objects would take ~250 MB, as str ~110 MB


def _peak_rss_mb(tmp_path: Path, args: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    for name in ENV_VARS:
        env.pop(name, None)
    p = subprocess.run([sys.executable, "-c", MEASURE, *args], env=env, capture_output=True, text=True, timeout=300,
                       cwd=tmp_path)
    line = [ln for ln in p.stderr.splitlines() if ln.startswith("MAXRSS_KB")]
    assert line, p.stderr[-2000:]
    return int(line[-1].split()[1]) / 1024, p


def test_a_million_missing_paths_stream_in_bounded_memory(ckpt, tmp_path):
    """The whole list is streamed (read, sharded) and the shard's 250 000 missing files become error
    rows, in order, without stopping; peak RSS grows by less than RSS_GROWTH_LIMIT_MB over a 1000-path run."""
    n = 1_000_000
    big, small = tmp_path / "million.csv", tmp_path / "thousand.csv"
    with open(big, "w") as fh:
        fh.write("path\n")
        fh.writelines(f"/nonexistent/d{i % 1000:03d}/img{i:07d}.jpg\n" for i in range(n))
    with open(big) as src, open(small, "w") as dst:
        dst.writelines(line for _, line in zip(range(1001), src))
    common = ["predict", str(ckpt), "--batch-size", "1024", "--shard", "0/4", *FAST]
    base_mb, _ = _peak_rss_mb(tmp_path, [*common[:2], str(small), "--out", "small.csv", *common[2:]])
    peak_mb, p = _peak_rss_mb(tmp_path, [*common[:2], str(big), "--out", "big.csv", *common[2:]])
    part = tmp_path / "big.csv.part-00000-of-00004"
    with open(part) as fh:
        rows = csv.reader(fh)
        assert next(rows) == list(COLUMNS)
        count, last = 0, -1
        for row in rows:
            count += 1
            assert row[2] == "error" and row[6] == "file not found"
            i = int(row[0][-11:-4])
            assert i > last  # input order
            last = i
    assert count == sum(Shard(0, 4).owns(f"/nonexistent/d{i % 1000:03d}/img{i:07d}.jpg") for i in range(n))
    assert f"{n - count} for other shards" in p.stderr
    print(f"peak RSS: {base_mb:.0f} MB for 1000 paths, {peak_mb:.0f} MB for {n} paths")
    assert peak_mb - base_mb < RSS_GROWTH_LIMIT_MB, (base_mb, peak_mb)
