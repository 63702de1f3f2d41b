"""The blind listening page in a real headless Chromium (Debian's chromium + chromedriver via selenium):
rate a compare run, check the stored scores and `listen --results`. The server listens on 127.0.0.1
only and stops on its own after a bounded lifetime. In CI (CI=true) a missing browser is a failure."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import sqlite3
import urllib.request

import numpy as np
import pytest
import soundfile as sf

from indextts_fast import compare, listening
from indextts_fast.cli import main
from indextts_fast.profiling import Timings

SR = 22050
VARIANTS = ["baseline", "extreme", "fastvar"]
TEXTS = ["Good morning, the kettle is on.", "明天我们一起去图书馆吧。"]


class ToneEngine:
    def synthesize(self, text, voice=None, settings=None, seed=None):
        t = np.arange(int(0.8 * SR)) / SR
        audio = (0.2 * np.sin(2 * np.pi * (150 + 10 * settings.diffusion_steps + seed) * t)).astype(np.float32)
        res = type("R", (), {})()
        res.audio, res.sample_rate, res.settings, res.seed = audio, SR, settings, seed
        res.timings = Timings(total=0.1, audio_seconds=0.8, codes=40)
        res.segments = []
        res.save = lambda path: sf.write(str(path), audio, SR, subtype="PCM_16")
        return res


@pytest.fixture
def run_dir(tmp_path):
    voices = []
    for i in range(2):
        voices.append(tmp_path / f"v{i}.wav")
        sf.write(voices[-1], 0.2 * np.sin(np.arange(SR) * (0.05 + 0.01 * i)), SR)
    variants = compare.variants_from(["baseline", "extreme"], ["fastvar=aggressive:diffusion_steps=7"])
    compare.run_compare(ToneEngine(), TEXTS, voices, variants, tmp_path / "run", extras=False, progress=False)
    return tmp_path / "run"


def browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver and importlib.util.find_spec("selenium")):
        why = "needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver) and selenium"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"browser test cannot run in CI: {why}", pytrace=False)
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--autoplay-policy=no-user-gesture-required"):
        opts.add_argument(flag)
    drv = webdriver.Chrome(service=Service(driver), options=opts)
    drv.set_page_load_timeout(30)
    drv.set_script_timeout(30)
    return drv


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read()


def test_rate_a_compare_run_in_a_real_browser(run_dir, capsys):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    secret = listening.ScoreDB(run_dir).secret()
    manifest = compare.load_manifest(run_dir)
    variant_of = {listening.opaque_id(secret, c["id"]): c["variant"] for c in manifest["clips"]}
    wanted = {"baseline": [5, 5, 5, 5], "extreme": [2, 2, 2, 2], "fastvar": [3, 4, 3, 4]}
    drv = browser()
    try:
        with listening.Server(run_dir, port=0, lifetime=120) as server:
            assert server.sock.getsockname()[0] == "127.0.0.1"
            # nothing served names a variant
            html = get(server.url).decode()
            items = get(server.url + "api/items").decode()
            for name in VARIANTS:
                assert name not in html and name not in items
            drv.get(server.url)
            drv.find_element(By.ID, "rater").send_keys("alice")
            drv.find_element(By.ID, "start").click()
            WebDriverWait(drv, 20).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
            rows = drv.find_elements(By.CSS_SELECTOR, ".clip")
            assert len(rows) == len(manifest["clips"]) == 12
            sources = drv.execute_script("return [...document.querySelectorAll('audio')].map(a => a.src)")
            assert all(re.fullmatch(re.escape(server.url) + r"clip/[0-9a-f]{24}\.wav", s) for s in sources)
            for name in VARIANTS:
                assert name not in drv.page_source and not any(name in s for s in sources)
            # the browser can load every clip as audio (duration from the served wav)
            durations = drv.execute_async_script("""
                const done = arguments[arguments.length - 1];
                Promise.all([...document.querySelectorAll('audio')].map(a => new Promise(ok => {
                    if (a.readyState >= 1) ok(a.duration);
                    a.addEventListener('loadedmetadata', () => ok(a.duration));
                    a.addEventListener('error', () => ok(-1));
                    a.load();
                }))).then(done);""")
            assert durations == pytest.approx([0.8] * 12, abs=0.01)
            # rate: each variant's clips in the order the page shows them
            given, scored = {name: iter(scores) for name, scores in wanted.items()}, {}
            for row in rows:
                oid = row.get_attribute("data-clip")
                score = scored[oid] = next(given[variant_of[oid]])
                row.find_element(By.CSS_SELECTOR, f"input[value='{score}']").click()
                WebDriverWait(drv, 10).until(
                    lambda d, r=row, s=score: r.find_element(By.CSS_SELECTOR, ".status").get_attribute("data-saved")
                    == str(s))
            assert drv.find_element(By.ID, "progress").text == "rated 12 of 12"
            # change one rating: replaced, not added
            first = rows[0]
            first.find_element(By.CSS_SELECTOR, "input[value='1']").click()
            WebDriverWait(drv, 10).until(
                lambda d: first.find_element(By.CSS_SELECTOR, ".status").get_attribute("data-saved") == "1")
            changed = first.get_attribute("data-clip")
            # a reload restores alice's scores into the page
            drv.refresh()
            drv.find_element(By.ID, "start").click()  # the name is remembered by the page
            WebDriverWait(drv, 20).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
            checked = drv.find_elements(By.CSS_SELECTOR, "input[type=radio]:checked")
            assert len(checked) == 12
    finally:
        drv.quit()
    assert not server.thread.is_alive()

    with sqlite3.connect(run_dir / listening.DB_NAME) as db:
        rows = db.execute("SELECT rater, variant, score FROM scores").fetchall()
    assert len(rows) == 12 and {r[0] for r in rows} == {"alice"}
    expected = {k: list(v) for k, v in wanted.items()}
    expected[variant_of[changed]].remove(scored[changed])
    expected[variant_of[changed]].append(1)
    for name in VARIANTS:
        assert sorted(r[2] for r in rows if r[1] == name) == sorted(expected[name])

    res = listening.results(run_dir)
    for name in VARIANTS:
        e = res["variants"][name]
        assert e["n"] == 4 and e["raters"] == 1 and e["mos"] == pytest.approx(sum(expected[name]) / 4)
    assert main(["listen", str(run_dir), "--results"]) == 0
    out = capsys.readouterr().out
    assert "Student t" in out
    for name in VARIANTS:
        assert re.search(rf"^{name}\s+4\s+1\s+{sum(expected[name]) / 4:.2f}\s", out, re.M), out


def test_results_confidence_interval_uses_student_t(run_dir):
    db = listening.ScoreDB(run_dir)
    clips = [c for c in compare.load_manifest(run_dir)["clips"] if c["variant"] == "fastvar"]
    for rater, score in (("a", 3), ("b", 4), ("c", 3), ("d", 4)):
        db.put(rater, clips[0]["id"], "fastvar", score)
    e = listening.results(run_dir)["variants"]["fastvar"]
    # mean 3.5, sd 0.57735, t(0.975, 3) = 3.182446
    half = 3.182446 * 0.5773503 / 2
    assert e["mos"] == 3.5 and e["ci95"] == pytest.approx([3.5 - half, 3.5 + half], abs=1e-5)
    assert listening.results(run_dir)["variants"]["baseline"] == {"n": 0, "raters": 0, "mos": None, "sd": None,
                                                                  "ci95": None}


def test_score_api_rejects_bad_input(run_dir):
    from fastapi.testclient import TestClient

    client = TestClient(listening.create_app(run_dir), base_url="http://127.0.0.1")
    oid = client.get("/api/items").json()["groups"][0]["clips"][0]["id"]
    assert client.post("/api/score", json={"rater": "bob", "clip": oid, "score": 6}).status_code == 422
    assert client.post("/api/score", json={"rater": "bob", "clip": "nope", "score": 3}).status_code == 400
    assert client.post("/api/score", json={"rater": "  ", "clip": oid, "score": 3}).status_code == 422
    assert client.get("/clip/nope.wav").status_code == 404
    assert client.get("/manifest.json").status_code == 404
    ok = client.post("/api/score", json={"rater": "bob", "clip": oid, "score": 3})
    assert ok.status_code == 200 and ok.json() == {"ok": True, "rated": 1, "total": 12}
    assert client.get("/docs").status_code == 404  # no API docs page naming anything
    data = json.dumps(client.get("/api/items?rater=bob").json())
    assert '"score": 3' in data


@pytest.mark.parametrize("body", ['{"rater":"b","clip":"%s","score":NaN}', '{"rater":"b","clip":"%s","score":-Infinity}',
                                  '{"rater":"b","clip":"%s","score":1e400}', '{"rater":"b","clip":"%s","score":2.5}',
                                  '[1, 2]', '\xff\xfe'])
def test_non_finite_or_malformed_scores_are_422_and_never_echoed(run_dir, body):
    from fastapi.testclient import TestClient

    client = TestClient(listening.create_app(run_dir), base_url="http://127.0.0.1", raise_server_exceptions=False)
    oid = client.get("/api/items").json()["groups"][0]["clips"][0]["id"]
    payload = body % oid if "%s" in body else body
    r = client.post("/api/score", content=payload.encode("latin-1"), headers={"content-type": "application/json"})
    assert r.status_code == 422 and "Traceback" not in r.text and oid not in r.text
    assert listening.results(run_dir)["variants"]["baseline"]["n"] == 0        # nothing stored


def test_foreign_host_headers_and_large_bodies_are_refused(run_dir):
    from fastapi.testclient import TestClient

    client = TestClient(listening.create_app(run_dir), base_url="http://127.0.0.1")
    assert client.get("/api/items").status_code == 200
    assert client.get("/api/items", headers={"host": "localhost:8765"}).status_code == 200
    assert client.get("/api/items", headers={"host": "attacker.example"}).status_code == 400   # DNS rebinding
    big = b'{"rater": "' + b"x" * 50_000_000 + b'"}'
    r = client.post("/api/score", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and len(r.content) < 200                       # not echoed back
    def chunks():   # no Content-Length: refused once the limit is read
        for _ in range(1000):
            yield b"x" * 65536
    assert client.post("/api/score", content=chunks()).status_code == 413


@pytest.mark.parametrize("content", ["{not json", '{"texts": []}', "[]"])
def test_listen_on_an_invalid_manifest_names_the_file(tmp_path, capsys, content):
    from indextts_fast.cli import main

    (tmp_path / "manifest.json").write_text(content)
    assert main(["listen", str(tmp_path), "--lifetime", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "manifest.json" in err and "Traceback" not in err
    assert not (tmp_path / listening.DB_NAME).exists()


def test_listen_on_an_empty_folder_creates_nothing(tmp_path, capsys):
    from indextts_fast.cli import main

    assert main(["listen", str(tmp_path), "--lifetime", "1"]) == 2
    assert "no manifest.json" in capsys.readouterr().err and list(tmp_path.iterdir()) == []
