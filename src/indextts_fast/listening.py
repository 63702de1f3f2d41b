"""Blind listening test of a compare run: a small FastAPI app on 127.0.0.1, scores in SQLite.

The page shows, per text and voice, that group's clips in a fresh random order, unlabelled; clips are
served by opaque ids (HMAC of the clip id with a secret kept in the database), so neither the page nor
any URL names a variant. A rater gives each clip a score from 1 (bad) to 5 (excellent); a later score by
the same rater for the same clip replaces the earlier one. Scores live in DIR/listening.sqlite3.

Results: mean opinion score per variant with a 95 % confidence interval from Student's t distribution
(mean +- t(0.975, n-1) * s / sqrt(n), every score counted as one observation), and the count.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import random
import secrets
import json
import sqlite3
import statistics
import time
from contextlib import closing
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, Field
from starlette.requests import Request   # at module level: FastAPI resolves the endpoint's annotation here

from .compare import load_manifest
from .errors import OptionError

DB_NAME = "listening.sqlite3"
PAGE = Path(__file__).parent / "web" / "listen.html"
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS scores (
    rater TEXT NOT NULL,
    clip_id TEXT NOT NULL,
    variant TEXT NOT NULL,
    score INTEGER NOT NULL CHECK (score BETWEEN 1 AND 5),
    rated_at TEXT NOT NULL,
    PRIMARY KEY (rater, clip_id)
);
"""


class ScoreDB:
    """The scores of one compare run (a new connection per call: safe from any server thread)."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / DB_NAME
        with closing(self._connect()) as db, db:
            db.executescript(SCHEMA)
            db.execute("INSERT OR IGNORE INTO meta VALUES ('secret', ?)", (secrets.token_hex(32),))

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10)
        db.execute("PRAGMA busy_timeout = 10000")
        return db

    def secret(self) -> bytes:
        with closing(self._connect()) as db:
            return bytes.fromhex(db.execute("SELECT value FROM meta WHERE key = 'secret'").fetchone()[0])

    def put(self, rater: str, clip_id: str, variant: str, score: int) -> None:
        with closing(self._connect()) as db, db:
            db.execute("INSERT INTO scores VALUES (?, ?, ?, ?, ?) ON CONFLICT (rater, clip_id) DO UPDATE SET "
                       "score = excluded.score, variant = excluded.variant, rated_at = excluded.rated_at",
                       (rater, clip_id, variant, int(score), time.strftime("%Y-%m-%dT%H:%M:%S%z")))

    def of_rater(self, rater: str) -> dict[str, int]:
        with closing(self._connect()) as db:
            return dict(db.execute("SELECT clip_id, score FROM scores WHERE rater = ?", (rater,)).fetchall())

    def all(self) -> list[tuple[str, str, str, int]]:
        """(rater, clip_id, variant, score) rows."""
        with closing(self._connect()) as db:
            return db.execute("SELECT rater, clip_id, variant, score FROM scores ORDER BY rater, clip_id").fetchall()


class Score(BaseModel):
    """One rating as the page posts it (clip = the opaque id)."""

    rater: str = Field(min_length=1, max_length=64)
    clip: str = Field(min_length=1, max_length=64)
    score: int = Field(ge=1, le=5)


MAX_BODY = 4096   # bytes: a score is ~100


async def _read_score(request):
    """The posted score, or the error response: 413 past MAX_BODY (read no further), 422 for anything that is
    not one JSON object with a finite 1-5 score (NaN, Infinity, 1e400 included). Errors name the field, never
    echo the input."""
    from fastapi.responses import JSONResponse
    from pydantic import ValidationError

    size = request.headers.get("content-length", "")
    if size and (not size.isdigit() or int(size) > MAX_BODY):
        return JSONResponse({"detail": f"request body over {MAX_BODY} bytes"}, status_code=413)
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            return JSONResponse({"detail": f"request body over {MAX_BODY} bytes"}, status_code=413)

    def no_constants(name: str):
        raise ValueError(f"{name} is not a number this API takes")

    try:
        data = json.loads(body, parse_constant=no_constants)
        return Score.model_validate(data)
    except ValidationError as e:
        fields = ", ".join(".".join(map(str, err["loc"])) + ": " + err["msg"] for err in e.errors(include_input=False))
        return JSONResponse({"detail": fields}, status_code=422)
    except ValueError as e:   # not JSON (UnicodeDecodeError and JSONDecodeError are ValueErrors)
        return JSONResponse({"detail": f"the body is not a JSON score: {str(e)[:100]}"}, status_code=422)


def opaque_id(secret: bytes, clip_id: str) -> str:
    return hmac.new(secret, clip_id.encode(), hashlib.sha256).hexdigest()[:24]


def create_app(run_dir: str | Path):
    """The FastAPI app serving the blind page, the clips by opaque id, and the score API."""
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    run_dir = Path(run_dir).resolve()
    manifest = load_manifest(run_dir)
    db = ScoreDB(run_dir)
    secret = db.secret()
    clips = {opaque_id(secret, c["id"]): c for c in manifest["clips"] if c.get("error") is None
             and (run_dir / c["file"]).resolve().is_relative_to(run_dir) and (run_dir / c["file"]).is_file()}
    if not clips:
        raise OptionError(f"{run_dir}: the compare run has no clips to rate")
    groups: dict[tuple[int, int], list[str]] = {}
    for oid, c in clips.items():
        groups.setdefault((c["text_index"], c["voice_index"]), []).append(oid)
    page = PAGE.read_text(encoding="utf-8")
    shuffle = random.SystemRandom().shuffle

    app = FastAPI(title="listening test", docs_url=None, redoc_url=None, openapi_url=None)
    # only this machine's own names: a page of another host name (DNS rebinding) gets 400
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost"])

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/api/items")
    def items(rater: str = "") -> dict:
        mine = db.of_rater(rater.strip()) if rater.strip() else {}
        out = []
        n_voices = len(manifest["voices"])
        for (ti, vi), oids in sorted(groups.items()):
            order = list(oids)
            shuffle(order)
            title = f"Text {ti + 1}" + (f", voice {vi + 1}" if n_voices > 1 else "")
            out.append({"title": title, "text": manifest["texts"][ti],
                        "clips": [{"id": o, "score": mine.get(clips[o]["id"])} for o in order]})
        return {"groups": out, "total": len(clips)}

    @app.get("/clip/{oid}.wav")
    def clip(oid: str):
        c = clips.get(oid)
        if c is None:
            raise HTTPException(404, "no such clip")
        return FileResponse(run_dir / c["file"], media_type="audio/wav", headers={"Cache-Control": "no-store"})

    @app.post("/api/score")
    async def score(request: Request):
        s = await _read_score(request)
        if isinstance(s, JSONResponse):
            return s
        c = clips.get(s.clip)
        rater = s.rater.strip()
        if c is None or not rater:
            raise HTTPException(400 if rater else 422, "unknown clip" if rater else "give a rater name")
        db.put(rater, c["id"], c["variant"], s.score)
        return {"ok": True, "rated": len(db.of_rater(rater)), "total": len(clips)}

    return app


def Server(run_dir: str | Path, port: int = 0, lifetime: Optional[float] = None):
    """The listening page under uvicorn on 127.0.0.1:`port` (0 = any free port) in a background thread."""
    from .localhost import ThreadedServer

    return ThreadedServer(create_app(run_dir), port=port, lifetime=lifetime)


# ---- results ------------------------------------------------------------------------------------------

def t_quantile(p: float, df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(p, df))


def results(run_dir: str | Path) -> dict:
    """Per variant (in the manifest's order): n scores, raters, MOS, sample sd, 95 % t interval."""
    manifest = load_manifest(run_dir)
    rows = ScoreDB(run_dir).all()
    out = {}
    for name in manifest["variants"]:
        scores = [r[3] for r in rows if r[2] == name]
        n = len(scores)
        entry = {"n": n, "raters": len({r[0] for r in rows if r[2] == name}), "mos": None, "sd": None,
                 "ci95": None}
        if n:
            mean = statistics.fmean(scores)
            entry["mos"] = mean
            if n > 1:
                sd = statistics.stdev(scores)
                half = t_quantile(0.975, n - 1) * sd / math.sqrt(n)
                entry.update(sd=sd, ci95=[mean - half, mean + half])
        out[name] = entry
    return {"variants": out, "scores": len(rows), "raters": sorted({r[0] for r in rows}),
            "interval": "95% CI, Student t with n-1 degrees of freedom: mean +- t(0.975, n-1) * sd / sqrt(n)"}


def format_results(res: dict) -> str:
    names = list(res["variants"])
    width = max(10, *(len(n) for n in names))
    lines = [f"{'variant':<{width}}  {'n':>4}  {'raters':>6}  {'MOS':>5}  95% CI (t)",
             "-" * (width + 40)]
    for name, e in res["variants"].items():
        mos = f"{e['mos']:.2f}" if e["mos"] is not None else "-"
        ci = f"[{e['ci95'][0]:.2f}, {e['ci95'][1]:.2f}]" if e["ci95"] else "n/a (needs 2+ scores)"
        lines.append(f"{name:<{width}}  {e['n']:>4}  {e['raters']:>6}  {mos:>5}  {ci}")
    lines.append(f"{res['scores']} score(s) by {len(res['raters'])} rater(s); {res['interval']}")
    return "\n".join(lines)
