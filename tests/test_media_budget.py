"""Bounded storage: uploads kept once per content, and the media store plus the uploads
kept under ``SEGRESEARCH_MEDIA_MAX_GB`` without any stored thread losing an image.

Two ``MediaStore`` objects on one folder stand in for two server processes: nothing but the
folder is shared between them (a fresh store has none of the other's in-memory recipes).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI
from PIL import Image
from starlette.testclient import TestClient

from segresearch.core import media_store, shared_cache
from segresearch.core.media import open_media, resize_square
from segresearch.core.media_store import (
    DiskBudget,
    FrameRecipe,
    ImageUnavailable,
    MediaStore,
    digest_of,
    upload_meta,
)
from segresearch.testing.scenes import write_video

SIZE = 48  # side of the frames shown to the "model"


def _noise(seed: int, size: tuple[int, int] = (64, 64)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _sources(folder: Path, n: int, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"{i:05d}.png"
        p.write_bytes(_png(_noise(seed + i)))
        paths.append(p)
    return paths


def _put_frame(store: MediaStore, spec: str, fid: int, size: int = SIZE) -> str:
    """What the graph does for a shown frame: the resized pixels plus their recipe."""
    media = open_media(spec)
    img = resize_square(media.frame(fid), size)
    return store.put(img, FrameRecipe.for_frame(media, spec, fid, size))


def _png_path(folder: Path, digest: str) -> Path:
    return folder / digest[:2] / f"{digest}.png"


def _age(path: Path, seconds_ago: float) -> None:
    t = time.time() - seconds_ago
    os.utime(path, (t, t))


def _store(folder: Path, budget: int | None = None, uploads: Path | None = None) -> MediaStore:
    store = MediaStore(folder, disk_max_bytes=budget, upload_root=uploads)
    if store.budget is not None:
        store.budget.min_age_s = 0  # the tests age files by hand
    return store


def _pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"))


# ------------------------------------------------------------------ uploads


@pytest.fixture()
def upload_client(tmp_path, monkeypatch, fresh_media_store):
    """The web router's routes on a bare app, with a fresh process-wide store."""
    uploads = tmp_path / "uploads"
    monkeypatch.setenv("SEGRESEARCH_UPLOAD_ROOT", str(uploads))
    monkeypatch.setenv("SEGRESEARCH_MEDIA_STORE", str(tmp_path / "media"))
    monkeypatch.delenv("SEGRESEARCH_MEDIA_ROOTS", raising=False)
    monkeypatch.delenv(media_store.MAX_GB_ENV, raising=False)
    from segresearch.servers import web

    app = FastAPI()
    app.router.routes.extend(web.router.routes)
    return TestClient(app), uploads


def test_same_bytes_under_six_names_are_one_upload(upload_client):
    client, uploads = upload_client
    data = _png(_noise(7))
    names = ["a.png", "B.PNG", "holiday photo.png", "../../x.png", "wrong-ext.jpg", "c.tif"]
    answers = [client.put(f"/segresearch/uploads?name={n}", content=data) for n in names]
    assert all(a.status_code == 201 for a in answers), [a.text for a in answers]
    paths = {a.json()["path"] for a in answers}
    want = uploads.resolve() / f"{hashlib.sha256(data).hexdigest()}.png"  # the content's format
    assert paths == {str(want)} and want.read_bytes() == data
    assert [a.json()["reused"] for a in answers] == [False] + [True] * 5
    assert [p.name for p in uploads.iterdir() if not p.name.startswith(".")] == [want.name]
    # the names live in a hidden sidecar; the library labels the file with the newest
    names_kept = json.loads(upload_meta(want, "names.json").read_text())["names"]
    assert names_kept[0] == "c.tif" and "holiday_photo.png" in names_kept and "x.png" in names_kept
    lib = client.get("/segresearch/library").json()
    assert [(i["path"], i["label"]) for i in lib["items"]] == [(str(want), "c.tif")]
    other = client.put("/segresearch/uploads?name=a.png", content=_png(_noise(8)))
    assert other.json()["path"] != str(want) and not other.json()["reused"]
    assert len([p for p in uploads.iterdir() if not p.name.startswith(".")]) == 2
    assert not list(uploads.glob(".part-*"))


def test_upload_is_named_by_its_content_kind_and_still_refused_when_not_media(upload_client, tmp_path):
    client, uploads = upload_client
    frames = [_noise(i, (64, 48)) for i in range(6)]
    video = write_video(frames, tmp_path / "clip.mp4").read_bytes()
    up = client.put("/segresearch/uploads?name=clip.avi", content=video)  # an mp4 called .avi
    assert up.status_code == 201, up.text
    assert up.json()["name"] == hashlib.sha256(video).hexdigest() + ".mp4" and up.json()["kind"] == "video"
    junk = client.put("/segresearch/uploads?name=clip.mp4", content=b"\x00\x00\x00\x18ftypisom" + b"x" * 200)
    assert junk.status_code == 422 and "clip.mp4 is not usable as media" in junk.json()["detail"]
    assert not list(uploads.glob(".part-*")) and not list(uploads.glob("*.mp4"))[1:]


def test_a_new_upload_counts_against_the_budget(upload_client, monkeypatch):
    client, uploads = upload_client
    first = client.put("/segresearch/uploads?name=a.png", content=_png(_noise(1)))
    size = Path(first.json()["path"]).stat().st_size
    monkeypatch.setenv(media_store.MAX_GB_ENV, str(2.5 * size / (1 << 30)))
    shared_cache.clear("media.store")  # the next use reads the new budget
    media_store.get_store().budget.min_age_s = 0
    _age(Path(first.json()["path"]), 600)
    second = client.put("/segresearch/uploads?name=b.png", content=_png(_noise(2)))
    third = client.put("/segresearch/uploads?name=c.png", content=_png(_noise(3)))
    assert not Path(first.json()["path"]).exists()  # the least recently used upload went
    assert Path(second.json()["path"]).exists() and Path(third.json()["path"]).exists()
    assert not upload_meta(Path(first.json()["path"]), "names.json").exists()  # with its sidecars
    info = media_store.storage_info()
    assert info["used_bytes"] <= info["budget_bytes"] and info["evicted_files"] == 1


# ------------------------------------------------------------------ the budget


def test_budget_evicts_least_recently_used_frames_and_stays_under(tmp_path):
    src = _sources(tmp_path / "src", 8)
    probe = _store(tmp_path / "probe")
    one = len(probe.png_bytes(_put_frame(probe, str(src[0]), 0)))
    budget = int(4.5 * (one + 400))  # room for four frames and their sidecars
    media = tmp_path / "media"
    store = _store(media, budget)
    digests = []
    for i, p in enumerate(src):  # frame i was last used 800 - 100 i seconds ago
        digests.append(_put_frame(store, str(p), 0))
        _age(_png_path(media, digests[-1]), 800 - 100 * i)
        store.budget._scanned = time.monotonic()  # only the running total decides here
    store.budget.enforce()
    on_disk = [_png_path(media, d).exists() for d in digests]
    assert on_disk == [False] * 4 + [True] * 4 or on_disk == [False] * 5 + [True] * 3, on_disk
    assert all(_png_path(media, d).with_suffix(".json").exists() for d in digests)  # recipes stay
    report = store.storage(max_age=0)
    assert report["used_bytes"] <= budget and report["evictable_bytes"] > 0
    assert report["evicted_files"] == on_disk.count(False)
    # a PNG read (or written again) is used: it moves to the back of the queue
    fresh = _store(media, budget)
    assert fresh.get(digests[4]) is not None
    assert time.time() - _png_path(media, digests[4]).stat().st_mtime < 60


def test_writes_alone_keep_the_folder_under_the_budget(tmp_path):
    src = _sources(tmp_path / "src", 12)
    media = tmp_path / "media"
    store = _store(media, 40_000)
    for p in src:
        digest = _put_frame(store, str(p), 0)
        _age(_png_path(media, digest), 100)  # older than the minimum age, so evictable
        store.budget._total = None  # as if time had passed: the next write rescans
    usage = DiskBudget(media, None, None).scan()
    assert usage.total <= 40_000 and store.budget.evicted_files > 0


def test_evicted_frame_is_remade_exactly_in_a_fresh_store(tmp_path):
    frames = [_noise(i, (80, 60)) for i in range(10)]
    video = write_video(frames, tmp_path / "clip.mp4")
    folder = tmp_path / "frames"
    _sources(folder, 3, seed=20)
    media = tmp_path / "media"
    writer = _store(media)
    made = {(str(video), 7): None, (str(folder), 2): None, (str(video), 0): None}
    for spec, fid in made:
        digest = _put_frame(writer, spec, fid)
        made[(spec, fid)] = (digest, _pixels(writer.get(digest)))
        _png_path(media, digest).unlink()  # evicted
    for (spec, fid), (digest, pixels) in made.items():
        fresh = MediaStore(media)  # a new process: no recipe in memory, only the sidecar
        img = fresh.get(digest)
        assert digest_of(img) == digest and np.array_equal(_pixels(img), pixels), (spec, fid)
        assert _png_path(media, digest).exists()  # written back: in use again
        assert fresh.png_bytes(digest) == _png_path(media, digest).read_bytes()
    side = json.loads(_png_path(media, made[(str(video), 7)][0]).with_suffix(".json").read_text())
    assert side["source"] == str(video.resolve()) and side["video"] and side["frame"] == 7
    assert side["size"] == SIZE and side["resize"] == "square-bicubic"


def test_pinned_images_are_never_evicted(tmp_path, caplog):
    src = _sources(tmp_path / "src", 3)
    media = tmp_path / "media"
    store = _store(media, 10_000)
    pinned = [store.put(Image.fromarray(_noise(100 + i))) for i in range(3)]  # e.g. search hits
    frames = [_put_frame(store, str(p), 0) for p in src]
    for d in pinned + frames:
        _age(_png_path(media, d), 3600)
    with caplog.at_level(logging.WARNING, logger="segresearch.core.media_budget"):
        store.budget.enforce()
    assert all(_png_path(media, d).exists() for d in pinned)
    assert not any(_png_path(media, d).exists() for d in frames)  # all evictable ones went
    report = store.storage(max_age=0)
    assert report["pinned_over_budget"] and report["over_budget"] and report["evictable_bytes"] == 0
    assert "pinned" in caplog.text and "exceeds the budget" in caplog.text
    assert all(MediaStore(media).get(d) for d in pinned + frames)


def test_changed_or_vanished_source_is_unavailable_not_wrong(tmp_path):
    src = _sources(tmp_path / "src", 2)
    media = tmp_path / "media"
    store = _store(media)
    changed, vanished = (_put_frame(store, str(p), 0) for p in src)
    for d in (changed, vanished):
        _png_path(media, d).unlink()
    src[0].write_bytes(_png(_noise(99)))  # other pixels under the same name
    src[1].unlink()
    with pytest.raises(ImageUnavailable, match="changed since the image was made"):
        MediaStore(media).get(changed)
    with pytest.raises(KeyError, match=f"{vanished[:12]} is unavailable: its source .* is gone"):
        MediaStore(media).get(vanished)
    assert not _png_path(media, changed).exists()  # nothing wrong was written back
    # and a frame whose source changed while its PNG is on disk is kept (it cannot come back)
    keep_src = _sources(tmp_path / "src2", 1, seed=50)[0]
    keep = _put_frame(store, str(keep_src), 0)
    _age(_png_path(media, keep), 3600)
    keep_src.write_bytes(_png(_noise(51)))
    evictor = _store(media, 1)
    evictor.budget.enforce()
    assert _png_path(media, keep).exists() and evictor.storage(max_age=0)["pinned_bytes"] > 0


def test_frames_of_an_upload_survive_its_eviction(tmp_path):
    uploads, media = tmp_path / "uploads", tmp_path / "media"
    upload = _sources(uploads, 1, seed=30)[0].rename(uploads / ("ab" * 32 + ".png"))
    digest = _put_frame(_store(media, None, uploads), str(upload), 0)  # a run on the upload
    png = _png_path(media, digest)
    pixels, frame_bytes = _pixels(MediaStore(media).get(digest)), png.stat().st_size
    _age(png, 7200)  # the frame is older than its upload (whose own mtime is left alone:
    _age(upload_meta(upload, "used"), 3600)  # it is part of the frame's recipe)
    # 1. a budget that only the frame must leave for: it goes, recorded against the upload
    total = DiskBudget(media, uploads, None).scan().total
    first = _store(media, int((total - frame_bytes) / media_store.LOW_WATER) + 1, uploads)
    first.budget.enforce()
    assert not png.exists() and upload.exists()
    assert upload_meta(upload, "refs").read_text().split() == [digest]
    # 2. the upload must go too: the frame is written back first, and stays (pinned)
    second = _store(media, 1, uploads)
    second.budget.enforce()
    assert not upload.exists() and png.exists()
    assert not upload_meta(upload, "refs").exists() and not upload_meta(upload, "used").exists()
    assert np.array_equal(_pixels(MediaStore(media).get(digest)), pixels)
    report = second.storage(max_age=0)
    assert report["upload_bytes"] == 0 and report["pinned_bytes"] >= png.stat().st_size
    second.budget.enforce()
    assert png.exists()  # its source is gone: never evicted again


def test_two_stores_on_one_folder_keep_every_image(tmp_path):
    """Stand-ins for two processes writing frames, uploads and pinned images under one small
    budget: afterwards every image either process made is still there or remade exactly."""
    uploads, media = tmp_path / "uploads", tmp_path / "media"
    ups = [p.rename(uploads / f"{i:064x}.png") for i, p in enumerate(_sources(uploads, 4, seed=60))]
    for p in ups:  # uploaded a while ago; from now on only their use stamps move
        _age(p, 2000)
    plain = _sources(tmp_path / "src", 6, seed=70)
    a, b = _store(media, 60_000, uploads), _store(media, 60_000, uploads)
    made: dict[str, np.ndarray] = {}
    from_upload: dict[str, Path] = {}
    for i in range(6):
        for store, spec in ((a, ups[i % 4]), (b, plain[i]), (a, plain[(i + 3) % 6])):
            if not spec.exists():  # an evicted upload: a new run on it would be refused
                continue
            d = _put_frame(store, str(spec), 0, size=SIZE + 8 * (i % 3))
            if spec in ups:
                from_upload[d] = spec
            made[d] = _pixels(store.get(d))
        d = b.put(Image.fromarray(_noise(200 + i)))  # pinned
        made[d] = _pixels(b.get(d))
        for p in [*media.rglob("*.png"), *uploads.glob(".meta/*.used")]:
            if p.exists():
                _age(p, 100 + 50 * (6 - i) + p.stat().st_size % 17)
        (a if i % 2 else b).budget.enforce()
    assert a.budget.evicted_files + b.budget.evicted_files > 0
    assert any(not p.exists() for p in ups)  # uploads were evicted too
    # an upload that is gone left every frame made from it on disk
    assert all(_png_path(media, d).exists() for d, up in from_upload.items() if not up.exists())
    assert any(not up.exists() for up in from_upload.values())
    for digest, pixels in made.items():
        img = MediaStore(media).get(digest)  # a third process, knowing only the folder
        assert np.array_equal(_pixels(img), pixels), digest
    assert a.storage(max_age=0)["used_bytes"] <= 60_000 or a.storage(max_age=0)["pinned_over_budget"]


def test_only_one_evictor_at_a_time_and_never_waiting(tmp_path):
    media = tmp_path / "media"
    a, b = _store(media, 1), _store(media, 1)
    with media_store._exclusive(a.budget.lock_path) as held:
        assert held
        t0 = time.perf_counter()
        assert b.budget.enforce() is False  # another process is at it: go on writing
        assert time.perf_counter() - t0 < 0.5
    assert b.budget.enforce() is True


def test_memory_tier_touches_no_file(tmp_path, monkeypatch):
    store = _store(tmp_path / "media", 10_000_000)
    img = Image.fromarray(_noise(3))
    digest = store.put(img)

    def boom(*a, **k):
        raise AssertionError("file system call on the in-memory path")

    for name in ("stat", "utime", "open", "scandir"):
        monkeypatch.setattr(media_store.os, name, boom)
    assert store.get(digest) is not None and store.resident(digest)


def test_stale_temporary_files_are_cleaned_and_unlimited_deletes_nothing(tmp_path, monkeypatch):
    media = tmp_path / "media"
    d = _put_frame(_store(media), str(_sources(tmp_path / "src", 1)[0]), 0)
    store = _store(media, 1)
    stale = _png_path(media, d).parent / "tmpdead.png.tmp"
    stale.write_bytes(b"x" * 100)
    _age(stale, 2 * media_store.STALE_TMP_SECONDS)
    _age(_png_path(media, d), 3600)
    unlimited = _store(media, None)
    unlimited.budget.note_write(10**12)
    assert stale.exists() and _png_path(media, d).exists()
    store.budget.enforce()
    assert not stale.exists() and not _png_path(media, d).exists()
    for raw, want in (("", None), ("0", None), ("junk", None), ("-1", None), ("1.5", int(1.5 * (1 << 30)))):
        monkeypatch.setenv(media_store.MAX_GB_ENV, raw)
        assert media_store.max_disk_bytes() == want, raw


def test_info_reports_storage(tmp_path, monkeypatch, fresh_media_store):
    monkeypatch.setenv("SEGRESEARCH_MEDIA_STORE", str(tmp_path / "media"))
    monkeypatch.setenv(media_store.MAX_GB_ENV, "0.001")
    media_store.get_store().put(Image.fromarray(_noise(4)))
    info = media_store.storage_info()
    assert info["budget_bytes"] == int(0.001 * (1 << 30)) and info["used_bytes"] > 0
    assert info["pinned_bytes"] == info["used_bytes"] and info["evictable_bytes"] == 0
    assert set(info) >= {"over_budget", "pinned_over_budget", "media_folder", "upload_folder"}
