"""`sustain data download`: fetch the config's Kaggle sources with the user's own credentials.

For each selected source with a `kaggle:` slug:

1. skip it when its download folder holds a completion marker for the same slug and the
   source root is there; adopt a folder the user filled by hand (no marker, but the source
   root is there with images): count it and write the marker, download nothing;
2. otherwise ask the official `kaggle` client for the archive, into
   `<data.root>/.sustain_downloads/<source>/` (the client resumes a partial file itself;
   a finished archive is not fetched again);
3. unpack it ourselves, safely (no absolute or `..` member paths, no links, nothing
   executed), into a staging folder next to the download folder;
4. check the layout (the source root exists inside) and count the images with the scan that
   ingestion uses; then move the staging folder into place, write the marker
   `.sustain_download.json` (archive size and hash, counts; never a credential) and delete
   the archive.

Nothing Sustain did not create is ever deleted or overwritten: a download folder that holds
something else is left as it is and the dataset goes next to it (`<download_dir>.sustain-download`,
the summary says what to change in the config); an archive with an unexpected layout is kept in
`<download_dir>.unexpected-layout`. An interrupted unpack leaves only the (hidden) staging
folder, which the next run discards. The network call (`KaggleApi.dataset_download_files`) is
the only thing the tests fake.

This module plans and decides (skip, adopt, install beside); the credentials and the client
are in `kaggle_client`, the safe unpacking in `archive`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..config import Config, SourceConfig
from ..errors import ConfigError, RunFailed, UsageError
from ..taxonomy import build_taxonomy
from ..utils import atomic_write_json
from .archive import sha256_file, unpack_archive
from .kaggle_client import NetworkDown, fetch_archive, kaggle_api, require_credentials
from .labels import LabelMap, compile_label_map
from .walk import SourceCount, count_images

log = logging.getLogger("sustain.data.download")

MARKER_NAME = ".sustain_download.json"
MARKER_FORMAT = 1
ARCHIVES_DIR = ".sustain_downloads"  # under data.root


@dataclass(frozen=True)
class DownloadPlan:
    """Where one source's dataset goes. All paths absolute."""

    name: str
    slug: str  # owner/dataset
    dest: Path  # the download folder: the archive unpacks here
    root: Path  # the source root, inside dest
    archive_dir: Path  # the kaggle client writes <dataset>.zip here
    source: SourceConfig
    label_map: LabelMap  # compiled up front: a bad label_map fails before any download

    def count(self, root: Path | None = None) -> SourceCount:
        return count_images(root or self.root, self.label_map, self.source.exclude)

    @property
    def root_in_dest(self) -> Path:
        return self.root.relative_to(self.dest)

    @property
    def marker(self) -> Path:
        return self.dest / MARKER_NAME

    @property
    def staging(self) -> Path:
        return self.dest.parent / f".{self.dest.name}.unpacking"

    @property
    def beside(self) -> Path:
        """Where the download goes when `dest` holds something Sustain did not put there."""
        return self.dest.parent / f"{self.dest.name}.sustain-download"

    @property
    def unexpected(self) -> Path:
        """Where an archive whose layout does not match the config is kept, for the user to look at."""
        return self.dest.parent / f"{self.dest.name}.unexpected-layout"


# --------------------------------------------------------------------------- planning (nothing written)


def plan_downloads(cfg: Config, only: list[str] | None = None) -> list[DownloadPlan]:
    """The sources to fetch: enabled ones with a `kaggle:` slug, or exactly those in `only`.

    Unknown names in `only` are a UsageError that lists the valid ones. A named source without
    a slug is a UsageError; a named disabled source is fetched (the request is explicit).
    """
    sources = cfg.data.sources
    if only:
        known = {s.name for s in sources}
        unknown = [n for n in only if n not in known]
        if unknown:
            raise UsageError(f"Unknown source name(s) for --only: {', '.join(unknown)}",
                             f"valid names: {', '.join(s.name for s in sources)}")
        no_slug = [n for n in only if not next(s for s in sources if s.name == n).kaggle]
        if no_slug:
            raise UsageError(f"Source(s) without a `kaggle:` dataset slug: {', '.join(no_slug)}",
                             "add `kaggle: owner/dataset` to the source in the config, or fetch it yourself")
        selected = [(i, s) for i, s in enumerate(sources) if s.name in only]
    else:
        selected = [(i, s) for i, s in enumerate(sources) if s.enabled and s.kaggle]

    data_root = Path(cfg.data.root).expanduser().resolve()
    taxonomy = build_taxonomy(**cfg.taxonomy.model_dump())
    plans = [_plan_one(cfg, i, s, data_root, compile_label_map(s, taxonomy)) for i, s in selected]
    _check_no_overlap(plans, selected)
    return plans


def _plan_one(cfg: Config, index: int, src: SourceConfig, data_root: Path, label_map: LabelMap) -> DownloadPlan:
    key = f"data.sources.{index}"
    slug = (src.kaggle or "").strip()
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", slug):
        raise ConfigError(f"{key}.kaggle", f"expected an 'owner/dataset' slug, got {src.kaggle!r}",
                          "copy it from the dataset's URL: kaggle.com/datasets/<owner>/<dataset>")
    download_dir = src.download_dir or f"kaggle/{slug.split('/')[1]}"
    dest = (data_root / Path(download_dir).expanduser()).resolve()
    if dest == data_root or data_root not in dest.parents:
        raise ConfigError(f"{key}.download_dir", f"{download_dir!r} must be a sub-folder of data.root ({data_root})",
                          "use e.g. kaggle/<dataset>")
    root = cfg.source_root(src).resolve()
    if root != dest and dest not in root.parents:
        raise ConfigError(f"{key}.root", f"the source root {root} is not inside its download_dir {dest}",
                          "make `root` a path inside `download_dir` (both are relative to data.root)")
    return DownloadPlan(name=src.name, slug=slug, dest=dest, root=root,
                        archive_dir=data_root / ARCHIVES_DIR / src.name, source=src, label_map=label_map)


def _check_no_overlap(plans: list[DownloadPlan], selected: list[tuple[int, SourceConfig]]) -> None:
    # A swap replaces the whole download folder, so two sources must never share or nest one.
    for a in range(len(plans)):
        for b in range(a + 1, len(plans)):
            pa, pb = plans[a], plans[b]
            if pa.dest == pb.dest or pa.dest in pb.dest.parents or pb.dest in pa.dest.parents:
                raise ConfigError(f"data.sources.{selected[b][0]}.download_dir",
                                  f"{pb.name}'s download folder {pb.dest} overlaps {pa.name}'s ({pa.dest})",
                                  "give every source its own download_dir")


# --------------------------------------------------------------------------- verification


def _report_count(name: str, root: Path, count: SourceCount, note: str = "") -> None:
    log.info("✓ %s: %s%s in %s", name, count.describe(), note, root)
    if count.unmapped:
        folders = ", ".join(f"{f} ({n:,})" for f, n in count.unmapped_folders[:5])
        log.warning("⚠️  %s: %s image(s) map to no class, in: %s. Add those folders to the source's "
                    "label_map (or null to drop them).", name, f"{count.unmapped:,}", folders)


def read_marker(plan: DownloadPlan, dest: Path | None = None) -> dict[str, Any] | None:
    """The completion marker in `dest` (default: the plan's) if it vouches for this plan
    (same slug, root present), else None."""
    dest = plan.dest if dest is None else dest
    try:
        marker = json.loads((dest / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("format") != MARKER_FORMAT or marker.get("kaggle") != plan.slug:
        return None
    return marker if (dest / plan.root_in_dest).is_dir() else None


def _hand_placed(plan: DownloadPlan) -> SourceCount | None:
    """The count of a download folder the user filled by hand with the expected layout, else None."""
    if read_marker(plan) is not None or not plan.root.is_dir():
        return None
    count = plan.count()
    return count if count.images > 0 else None


def _write_marker(plan: DownloadPlan, dest: Path, count: SourceCount, **fields: Any) -> None:
    atomic_write_json(dest / MARKER_NAME, {
        "format": MARKER_FORMAT,
        "source": plan.name,
        "kaggle": plan.slug,
        **fields,
        "counts": {"images": count.images, "labelled": count.labelled, "dropped": count.dropped,
                   "unmapped": count.unmapped, "excluded": count.excluded},
        "root": plan.root_in_dest.as_posix(),
        "completed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })


def _config_change(plan: DownloadPlan, dest: Path) -> str:
    data_root = plan.archive_dir.parent.parent
    return (f"set data.sources[{plan.name}].download_dir: {dest.relative_to(data_root).as_posix()} and "
            f"root: {(dest / plan.root_in_dest).relative_to(data_root).as_posix()}")


# --------------------------------------------------------------------------- the command


def download_sources(cfg: Config, only: list[str] | None = None) -> bool:
    """Fetch, unpack and verify each selected source. True when every one is complete.

    Raises UsageError (exit 2) for bad names or missing credentials and NetworkDown (exit 1)
    when kaggle.com is unreachable; any other failure (a corrupt archive, a wrong layout, an
    HTTP error) fails only its source, and the others go on.
    """
    plans = plan_downloads(cfg, only)
    if not plans:
        log.info("Nothing to download: no enabled source in the config has a `kaggle:` slug.")
        return True
    pending = [p for p in plans if read_marker(p) is None and _hand_placed(p) is None
               and read_marker(p, p.beside) is None]
    api = None
    if pending:
        where = require_credentials()
        log.info("🔑 Using Kaggle credentials from %s", where)
        api = kaggle_api()

    results: dict[str, tuple[bool, str]] = {}
    for plan in tqdm(plans, desc="Sources", unit="source", leave=False):
        done = _already_there(plan)
        if done is not None:
            results[plan.name] = done
            continue
        if not plan.source.enabled:
            log.info("%s has enabled: false in the config; fetching it because --only names it", plan.name)
        try:
            results[plan.name] = (True, download_one(api, plan))
        except NetworkDown:
            raise
        except RunFailed as exc:  # this source only: corrupt archive, layout, HTTP error, disk
            log.error("❌ %s: %s", plan.name, exc)
            results[plan.name] = (False, str(exc))

    log.info("📊 Download summary:")
    for name, (ok, detail) in results.items():
        log.info("  %s %s: %s", "✓" if ok else "✗", name, detail)
    failed = [n for n, (ok, _) in results.items() if not ok]
    if failed:
        log.error("❌ %d of %d source(s) incomplete: %s", len(failed), len(results), ", ".join(failed))
    else:
        log.info("✓ All %d source(s) ready. Next: sustain data ingest --config <this config>", len(results))
    return not failed


def _already_there(plan: DownloadPlan) -> tuple[bool, str] | None:
    """(ok, summary) for a source that needs no download: marked, adopted, or fetched beside; else None."""
    if read_marker(plan) is not None:
        count = plan.count()
        _report_count(plan.name, plan.root, count, " (already downloaded)")
        return count.images > 0, count.describe() + ", already downloaded"
    count = _hand_placed(plan)
    if count is not None:
        _write_marker(plan, plan.dest, count, adopted=True)
        _report_count(plan.name, plan.root, count, " (placed by hand: adopted, nothing downloaded)")
        return True, count.describe() + ", placed by hand and adopted"
    if read_marker(plan, plan.beside) is not None:
        message = (f"downloaded earlier into {plan.beside}, because {plan.dest} holds other files; "
                   + _config_change(plan, plan.beside))
        log.warning("⚠️  %s: %s", plan.name, message)
        return True, message
    return None


def download_one(api: Any, plan: DownloadPlan) -> str:
    """Fetch, unpack, check and install one source; return its summary line."""
    target = plan.dest
    if _occupied(plan.dest):  # something Sustain did not put there: leave it, unpack next to it
        target = plan.beside
        if _occupied(target):
            raise RunFailed(f"{plan.dest} and {target} both hold files that Sustain did not put there",
                            "move them away, or point the source's download_dir somewhere empty")
        log.warning("⚠️  %s: %s holds files that are not this dataset's layout; leaving them untouched and "
                    "unpacking into %s", plan.name, plan.dest, target)
    log.info("📥 Downloading %s (%s) → %s", plan.name, plan.slug, target)
    archive = fetch_archive(api, plan.slug, plan.archive_dir)
    files = unpack_archive(archive, plan.staging, desc=f"Unpacking {plan.name}")

    staged_root = plan.staging / plan.root_in_dest
    count = plan.count(staged_root) if staged_root.is_dir() else None
    if count is None or count.images == 0:
        top = sorted(p.name for p in plan.staging.iterdir())[:10]
        where = "no images under" if staged_root.is_dir() else "missing folder"
        kept = _free_name(plan.unexpected)
        os.replace(plan.staging, kept)  # kept for the user to look at, never deleted by us
        raise RunFailed(
            f"unexpected layout in {archive.name}: {where} '{plan.root_in_dest.as_posix()}'; "
            f"the archive's top level holds {top}. Its files are in {kept}",
            "look there, fix the source's `root` (and download_dir) in the config, move the folder to "
            "the download_dir, and re-run")

    _install(plan.staging, target)
    _write_marker(plan, target, count, archive=archive.name, archive_bytes=archive.stat().st_size,
                  archive_sha256=sha256_file(archive), files=files)
    archive.unlink()
    _remove_empty(plan.archive_dir)
    _report_count(plan.name, target / plan.root_in_dest, count)
    if target != plan.dest:
        return f"{count.describe()}, in {target}: {_config_change(plan, target)}"
    return count.describe()


def _occupied(folder: Path) -> bool:
    return folder.exists() and (not folder.is_dir() or any(folder.iterdir()))


def _free_name(path: Path) -> Path:
    """`path`, or `path-2`, `path-3`, ... : the first that does not exist yet."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def _install(staging: Path, target: Path) -> None:
    """Move the staging folder to `target`, which is absent or an empty folder (nothing is replaced)."""
    if target.is_dir():
        target.rmdir()  # empty: fails, rather than deletes, if anything appeared in it meanwhile
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, target)


def _remove_empty(folder: Path) -> None:
    for path in (folder, folder.parent):
        try:
            path.rmdir()
        except OSError:
            return
