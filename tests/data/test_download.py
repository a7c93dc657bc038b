"""`sustain data download`: everything after the network runs for real on archives built here.

Only `KaggleApi.dataset_download_files` (the network call of the official client) is faked. The
fake behaves like the real one: it writes `<path>/<dataset>.zip`, leaves a finished archive
alone and finishes (appends to) a partial one.
"""

from __future__ import annotations

import inspect
import io
import json
import logging
import os
import uuid
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from sustain.config import config_from_dict
from sustain.data.archive import ArchiveError, safe_member_path, unpack_archive
from sustain.data.download import ARCHIVES_DIR, download_sources, plan_downloads
from sustain.data.kaggle_client import find_credentials
from sustain.errors import ConfigError, UsageError

PROJECT = Path(__file__).resolve().parents[2]


def _image_bytes(fmt: str, colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format=fmt)
    return buf.getvalue()


PNG = _image_bytes("PNG", (200, 10, 10))
JPG = _image_bytes("JPEG", (10, 200, 10))

# Small archives with the layouts of SPEC §4.
ARCHIVES: dict[str, dict[str, bytes]] = {
    "alistairking/recyclable-and-household-waste-classification": {
        "images/images/aerosol_cans/default/Image_1.png": PNG,
        "images/images/aerosol_cans/real_world/Image_2.png": PNG,
        "images/images/eggshells/default/Image_1.png": PNG,
        "images/images/eggshells/real_world/Image_9.png": PNG,
    },
    "techsash/waste-classification-data": {
        "DATASET/TRAIN/O/O_1.jpg": JPG,
        "DATASET/TRAIN/R/R_1.jpg": JPG,
        "DATASET/TEST/O/O_2.jpg": JPG,
        "DATASET/DATASET/TRAIN/O/O_1.jpg": JPG,  # the archive's nested duplicate copy: excluded
    },
    "asdasdasasdas/garbage-classification": {
        "Garbage classification/Garbage classification/cardboard/cardboard1.jpg": JPG,
        "Garbage classification/Garbage classification/plastic/plastic1.jpg": JPG,
        "Garbage classification/Garbage classification/trash/trash1.jpg": JPG,  # null: dropped
        "Garbage classification/Garbage classification/mystery/m1.jpg": JPG,  # unmapped
        "__MACOSX/Garbage classification/._cardboard1.jpg": b"\x00\x05\x16\x07",  # skipped
    },
}

SOURCES = [
    {"name": "master_30", "kaggle": "alistairking/recyclable-and-household-waste-classification",
     "download_dir": "kaggle/recyclable-and-household-waste-classification",
     "root": "kaggle/recyclable-and-household-waste-classification/images/images", "label_map": "identity"},
    {"name": "waste_22k", "kaggle": "techsash/waste-classification-data",
     "download_dir": "kaggle/waste-classification-data", "root": "kaggle/waste-classification-data/DATASET",
     "exclude": ["DATASET/**"],
     "label_map": {"O": "ORGANIC", "R": ["PLASTIC", "METAL", "GLASS", "PAPER", "CARDBOARD"]}},
    {"name": "garbage_6", "kaggle": "asdasdasasdas/garbage-classification",
     "download_dir": "kaggle/garbage-classification-6",
     "root": "kaggle/garbage-classification-6/Garbage classification/Garbage classification",
     "label_map": {"cardboard": "CARDBOARD", "plastic": "PLASTIC", "trash": None}},
]
# (images, labelled, dropped, unmapped) per source, as ingestion will see them.
EXPECTED = {"master_30": (4, 4, 0, 0), "waste_22k": (3, 3, 0, 0), "garbage_6": (4, 2, 1, 1)}


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _raw_config(data_root: Path, sources: list[dict] | None = None) -> dict:
    return {"data": {"root": str(data_root), "sources": sources or SOURCES},
            "model": {"name": "test_vit", "pretrained": False}}


class Records(logging.Handler):
    """Collects the "sustain" logger's messages, whatever handlers the CLI installed."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def records():
    handler = Records()
    logger = logging.getLogger("sustain")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A clean home and no KAGGLE_* variables: nothing from the developer's machine leaks in."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    for key in [k for k in os.environ if k.startswith("KAGGLE_")]:
        monkeypatch.delenv(key)
    return home


@pytest.fixture
def secret(home, monkeypatch):
    key = f"sustain-test-key-{uuid.uuid4().hex}"
    monkeypatch.setenv("KAGGLE_USERNAME", "sustain-tester")
    monkeypatch.setenv("KAGGLE_KEY", key)
    return key


@pytest.fixture
def kaggle_net(home, monkeypatch):
    """Fake the client's network call; everything else in the client (import, authenticate) is real."""
    from kaggle.api.kaggle_api_extended import KaggleApi

    real = KaggleApi.dataset_download_files
    served = {slug: _zip_bytes(members) for slug, members in ARCHIVES.items()}
    calls: list[dict] = []

    def fake(self, *args, **kwargs):
        bound = inspect.signature(real).bind(self, *args, **kwargs)  # called the way the real one accepts
        bound.apply_defaults()
        slug, path = bound.arguments["dataset"], Path(bound.arguments["path"])
        assert self._authenticated, "the client must be authenticated before downloading"
        payload = served[slug]
        if isinstance(payload, Exception):
            raise payload
        out = path / f"{slug.split('/')[1]}.zip"
        existing = out.stat().st_size if out.exists() else 0
        calls.append({"slug": slug, "force": bound.arguments["force"], "unzip": bound.arguments["unzip"],
                      "existing_bytes": existing})
        if existing < len(payload) or bound.arguments["force"]:
            path.mkdir(parents=True, exist_ok=True)
            with open(out, "ab" if existing and not bound.arguments["force"] else "wb") as fh:
                fh.write(payload[existing:] if not bound.arguments["force"] else payload)

    monkeypatch.setattr(KaggleApi, "dataset_download_files", fake)
    return {"served": served, "calls": calls}


def _counts(marker_path: Path) -> tuple[int, int, int, int]:
    counts = json.loads(marker_path.read_text())["counts"]
    return counts["images"], counts["labelled"], counts["dropped"], counts["unmapped"]


# --------------------------------------------------------------------------- the happy path


def test_download_unpacks_checks_layout_and_counts(tmp_path, secret, kaggle_net, records):
    data_root = tmp_path / "data"
    cfg = config_from_dict(_raw_config(data_root))

    assert download_sources(cfg) is True

    assert [c["unzip"] for c in kaggle_net["calls"]] == [False, False, False]  # we unpack ourselves
    for plan in plan_downloads(cfg):
        assert plan.root.is_dir()
        assert _counts(plan.marker) == EXPECTED[plan.name]
        marker = json.loads(plan.marker.read_text())
        assert marker["kaggle"] == plan.slug and len(marker["archive_sha256"]) == 64
        assert not list(plan.dest.parent.glob(".*.unpacking"))  # no staging left
    assert (data_root / "kaggle/recyclable-and-household-waste-classification/images/images/eggshells/real_world/Image_9.png").read_bytes() == PNG
    assert not (data_root / "kaggle/garbage-classification-6/__MACOSX").exists()
    assert not (data_root / ARCHIVES_DIR).exists()  # archives are deleted once unpacked and verified
    text = records.text
    assert "master_30: 4 images (4 labelled, 0 dropped, 0 unmapped)" in text
    assert "waste_22k: 3 images (3 labelled, 0 dropped, 0 unmapped, 1 excluded)" in text
    assert "garbage_6: 4 images (2 labelled, 1 dropped, 1 unmapped)" in text
    assert "mystery (1)" in text  # the unmapped folder is named


def test_only_selects_sources_and_rejects_unknown_names(tmp_path, secret, kaggle_net, records):
    cfg = config_from_dict(_raw_config(tmp_path / "data"))
    assert download_sources(cfg, only=["waste_22k"]) is True
    assert [c["slug"] for c in kaggle_net["calls"]] == ["techsash/waste-classification-data"]

    with pytest.raises(UsageError) as err:
        download_sources(cfg, only=["garbage_12"])
    assert "garbage_12" in str(err.value) and "master_30, waste_22k, garbage_6" in str(err.value)


def test_rerun_skips_complete_sources_without_credentials(tmp_path, secret, kaggle_net, records, monkeypatch):
    cfg = config_from_dict(_raw_config(tmp_path / "data"))
    assert download_sources(cfg) is True
    markers = {p.name: p.marker.read_bytes() for p in plan_downloads(cfg)}
    n_calls = len(kaggle_net["calls"])

    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    records.lines.clear()
    assert download_sources(cfg) is True

    assert len(kaggle_net["calls"]) == n_calls  # nothing fetched again, no credentials needed
    assert {p.name: p.marker.read_bytes() for p in plan_downloads(cfg)} == markers
    assert records.text.count("(already downloaded)") == 3
    assert "garbage_6: 4 images (2 labelled, 1 dropped, 1 unmapped)" in records.text


def test_partial_archive_and_interrupted_unpack_are_redone(tmp_path, secret, kaggle_net, records):
    cfg = config_from_dict(_raw_config(tmp_path / "data"))
    plan = next(p for p in plan_downloads(cfg) if p.name == "garbage_6")
    payload = kaggle_net["served"][plan.slug]
    # An interrupted download: the first half of the archive is on disk.
    plan.archive_dir.mkdir(parents=True)
    (plan.archive_dir / "garbage-classification.zip").write_bytes(payload[: len(payload) // 2])
    # An interrupted unpack: a half-filled staging folder (Sustain's own, hidden).
    (plan.staging / "junk").mkdir(parents=True)
    (plan.staging / "junk" / "half.jpg").write_bytes(JPG[:10])

    assert download_sources(cfg, only=["garbage_6"]) is True

    call = kaggle_net["calls"][-1]
    assert call["force"] is False and call["existing_bytes"] == len(payload) // 2  # handed over to resume
    assert not plan.staging.exists()
    assert sorted(p.name for p in plan.root.rglob("*.jpg")) == ["cardboard1.jpg", "m1.jpg", "plastic1.jpg", "trash1.jpg"]
    assert _counts(plan.marker) == EXPECTED["garbage_6"]


# --------------------------------------------------------------------------- failures


def _truncated(payload: bytes) -> bytes:
    return payload[: len(payload) - 40]  # the central directory is gone


def _bad_crc(payload: bytes) -> bytes:
    data = bytearray(payload)
    start = data.index(b"PK\x03\x04") + 30 + len("DATASET/TRAIN/O/O_1.jpg")  # first member's data
    data[start + 5] ^= 0xFF
    return bytes(data)


@pytest.mark.parametrize("damage", [_truncated, _bad_crc], ids=["truncated", "bad-crc"])
def test_corrupt_archive_is_reported_and_other_sources_go_on(tmp_path, secret, kaggle_net, records, damage):
    cfg = config_from_dict(_raw_config(tmp_path / "data"))
    slug = "techsash/waste-classification-data"
    kaggle_net["served"][slug] = damage(kaggle_net["served"][slug])

    assert download_sources(cfg) is False

    plans = {p.name: p for p in plan_downloads(cfg)}
    archive = plans["waste_22k"].archive_dir / "waste-classification-data.zip"
    message = next(line for line in records.lines if "Corrupt" in line)
    assert str(archive) in message and "delete it" in message and "re-run" in message
    assert archive.exists()  # left for the user to inspect and delete
    assert not plans["waste_22k"].marker.exists() and not plans["waste_22k"].dest.exists()
    assert plans["master_30"].marker.exists() and plans["garbage_6"].marker.exists()
    assert "✗ waste_22k" in records.text


def test_wrong_layout_fails_the_source_and_keeps_the_files(tmp_path, secret, kaggle_net, records):
    sources = [dict(SOURCES[0], root="kaggle/recyclable-and-household-waste-classification/pictures")]
    cfg = config_from_dict(_raw_config(tmp_path / "data", sources))

    assert download_sources(cfg) is False

    plan = plan_downloads(cfg)[0]
    kept = plan.dest.parent / f"{plan.dest.name}.unexpected-layout"
    assert "missing folder 'pictures'" in records.text and "['images']" in records.text
    assert str(kept) in records.text  # the user is told where the files are
    assert (kept / "images/images/eggshells").is_dir() and not plan.dest.exists() and not plan.marker.exists()

    assert download_sources(cfg) is False  # a second failure keeps the first one's files too
    assert kept.is_dir() and (kept.parent / f"{kept.name}-2" / "images").is_dir()


def test_unsafe_member_paths_are_refused(tmp_path):
    for name in ["../evil.png", "/abs.png", "a/../../evil.png", "C:/evil.png", "..\\evil.png"]:
        with pytest.raises(ArchiveError):
            safe_member_path(name)
    assert safe_member_path("./a//b/c.png").as_posix() == "a/b/c.png"

    archive = tmp_path / "evil.zip"
    archive.write_bytes(_zip_bytes({"ok/a.png": PNG, "../../evil.png": PNG}))
    with pytest.raises(ArchiveError, match="unsafe member"):
        unpack_archive(archive, tmp_path / "out" / "target")
    assert not (tmp_path / "evil.png").exists() and not (tmp_path / "out" / "target" / "ok").exists()


def test_no_network_says_so(tmp_path, secret, kaggle_net, run_cli, write_config):
    import requests

    for slug in kaggle_net["served"]:
        kaggle_net["served"][slug] = requests.ConnectionError("Failed to resolve 'www.kaggle.com'")
    result = run_cli("data", "download", "--config", write_config(_raw_config(tmp_path / "data")))

    assert result.code == 1
    assert "No network: could not reach kaggle.com" in result.output and "re-run" in result.output
    assert "Traceback" not in result.output


# --------------------------------------------------------------------------- credentials


def test_no_credentials_exits_2_with_instructions(tmp_path, home, run_cli, write_config):
    result = run_cli("data", "download", "--config", write_config(_raw_config(tmp_path / "data")))

    assert result.code == 2
    for needle in ["No Kaggle credentials found", "https://www.kaggle.com/settings", "~/.kaggle/kaggle.json",
                   "chmod 600", "KAGGLE_USERNAME", "KAGGLE_KEY"]:
        assert needle in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "data").exists()  # nothing was started


def test_no_credential_is_written_anywhere(tmp_path, secret, kaggle_net, records):
    cfg = config_from_dict(_raw_config(tmp_path / "data"))
    assert download_sources(cfg) is True
    assert secret not in records.text

    needle = secret.encode()
    skip = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", "node_modules"}
    checked = 0
    for base in (tmp_path, PROJECT):
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if d not in skip]
            for name in filenames:
                path = Path(dirpath, name)
                if path.is_symlink() or path.stat().st_size > 20_000_000:
                    continue
                checked += 1
                assert needle not in path.read_bytes(), f"the Kaggle key was written to {path}"
    assert checked > 10
    assert not list((tmp_path / "home").rglob("kaggle.json"))


def test_find_credentials_sources(home):
    assert find_credentials(env={}, home=home) is None
    assert "KAGGLE_USERNAME" in find_credentials(env={"KAGGLE_USERNAME": "u", "KAGGLE_KEY": "k"}, home=home)
    assert "KAGGLE_API_TOKEN" in find_credentials(env={"KAGGLE_API_TOKEN": "t"}, home=home)
    with pytest.raises(UsageError, match="KAGGLE_KEY is not set"):
        find_credentials(env={"KAGGLE_USERNAME": "u"}, home=home)

    config = home / ".kaggle" / "kaggle.json"
    config.parent.mkdir()
    config.write_text("{not json")
    with pytest.raises(UsageError, match="kaggle.json"):
        find_credentials(env={}, home=home)
    config.write_text(json.dumps({"username": "u", "key": "k"}))
    config.chmod(0o600)
    assert find_credentials(env={}, home=home) == str(config)


def test_download_dirs_are_checked_before_anything_runs(tmp_path):
    overlapping = [SOURCES[0], dict(SOURCES[1], download_dir="kaggle/recyclable-and-household-waste-classification/x",
                                    root="kaggle/recyclable-and-household-waste-classification/x")]
    with pytest.raises(ConfigError, match="overlaps"):
        plan_downloads(config_from_dict(_raw_config(tmp_path, overlapping)))
    outside = [dict(SOURCES[0], root="elsewhere/images")]
    with pytest.raises(ConfigError, match="not inside its download_dir"):
        plan_downloads(config_from_dict(_raw_config(tmp_path, outside)))
    escaping = [dict(SOURCES[0], download_dir="../outside", root="../outside/images")]
    with pytest.raises(ConfigError, match="sub-folder of data.root"):
        plan_downloads(config_from_dict(_raw_config(tmp_path, escaping)))


# --------------------------------------------------------------------------- never destroy what we did not create


def _hand_placed(root: Path, members: dict[str, bytes]) -> None:
    for name, data in members.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def test_a_folder_placed_by_hand_is_adopted_without_downloading(tmp_path, home, kaggle_net, records):
    cfg = config_from_dict(_raw_config(tmp_path / "data", [SOURCES[2]]))
    plan = plan_downloads(cfg)[0]
    _hand_placed(plan.dest, {k: v for k, v in ARCHIVES[plan.slug].items() if not k.startswith("__MACOSX")})
    (plan.dest / "NOTES.txt").write_text("my notes")

    assert download_sources(cfg) is True  # no credentials needed: nothing is fetched

    assert kaggle_net["calls"] == []
    assert (plan.dest / "NOTES.txt").read_text() == "my notes"
    assert json.loads(plan.marker.read_text())["adopted"] is True and _counts(plan.marker) == EXPECTED["garbage_6"]
    assert "placed by hand: adopted" in records.text

    records.lines.clear()
    assert download_sources(cfg) is True  # a re-run: still nothing fetched
    assert kaggle_net["calls"] == [] and "(already downloaded)" in records.text


def test_a_folder_with_other_content_is_left_alone_and_the_data_goes_next_to_it(tmp_path, secret, kaggle_net,
                                                                                records):
    cfg = config_from_dict(_raw_config(tmp_path / "data", [SOURCES[2]]))
    plan = plan_downloads(cfg)[0]
    _hand_placed(plan.dest, {"NOTES.txt": b"my notes", "old/garbage/x.jpg": JPG})

    assert download_sources(cfg) is True

    beside = plan.dest.parent / f"{plan.dest.name}.sustain-download"
    assert sorted(p.relative_to(plan.dest).as_posix() for p in plan.dest.rglob("*") if p.is_file()) == \
        ["NOTES.txt", "old/garbage/x.jpg"]  # untouched
    assert _counts(beside / ".sustain_download.json") == EXPECTED["garbage_6"]
    assert "leaving them untouched" in records.text and str(beside) in records.text
    assert "download_dir: kaggle/garbage-classification-6.sustain-download" in records.text  # what to change

    n_calls = len(kaggle_net["calls"])
    assert download_sources(cfg) is True  # a re-run does not fetch again, and repeats the advice
    assert len(kaggle_net["calls"]) == n_calls and "download_dir: kaggle/" in records.text


def test_a_zip_slip_member_fails_the_source_and_writes_nothing_outside(tmp_path, secret, kaggle_net, records):
    cfg = config_from_dict(_raw_config(tmp_path / "data", [SOURCES[2]]))
    plan = plan_downloads(cfg)[0]
    kaggle_net["served"][plan.slug] = _zip_bytes({**ARCHIVES[plan.slug], "../../../escaped.png": PNG})

    assert download_sources(cfg) is False

    assert "unsafe member" in records.text
    assert not list(tmp_path.rglob("escaped.png"))
    assert not plan.dest.exists() and not plan.marker.exists()
