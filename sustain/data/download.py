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
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import stat
import time
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm.auto import tqdm

from ..config import Config, SourceConfig
from ..errors import ConfigError, RunFailed, UsageError
from ..taxonomy import build_taxonomy
from ..utils import atomic_write_json
from .labels import LabelMap, compile_label_map
from .walk import SourceCount, count_images

log = logging.getLogger("sustain.data.download")

MARKER_NAME = ".sustain_download.json"
MARKER_FORMAT = 1
ARCHIVES_DIR = ".sustain_downloads"  # under data.root
SKIPPED_MEMBER_DIRS = frozenset({"__MACOSX"})  # macOS resource forks: metadata, not images

CREDENTIAL_HELP = """\
`sustain data download` uses your own Kaggle account. To set it up:
  1. Sign in at https://www.kaggle.com and open https://www.kaggle.com/settings (section "API").
  2. Either create a legacy API key: this downloads kaggle.json, which you save privately:
         mkdir -p ~/.kaggle && mv ~/Downloads/kaggle.json ~/.kaggle/kaggle.json
         chmod 600 ~/.kaggle/kaggle.json
     or set the same two values for this shell only:
         export KAGGLE_USERNAME=<your username>
         export KAGGLE_KEY=<your key>
     (the kaggle client also accepts a new-style API token in KAGGLE_API_TOKEN or
     ~/.kaggle/access_token, or a login with `kaggle auth login`.)
  3. Re-run the same command. Sustain never copies your credentials anywhere."""


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


class ArchiveError(RunFailed):
    """An archive that cannot be unpacked: corrupt, truncated or unsafe."""


class NetworkDown(RunFailed):
    """kaggle.com cannot be reached: every remaining source would fail the same way."""


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


def safe_member_path(name: str) -> PurePosixPath:
    """The relative path an archive member may be written to; ArchiveError for an unsafe one."""
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise ArchiveError(f"absolute path {name!r}")
    parts = [p for p in re.split(r"[\\/]+", name) if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"path escaping the target folder {name!r}")
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


# --------------------------------------------------------------------------- credentials


def find_credentials(env: Mapping[str, str] | None = None, home: Path | None = None) -> str | None:
    """Where the kaggle client will find credentials, described (never the secret), or None.

    Mirrors kaggle 2.x: KAGGLE_API_TOKEN or ~/.kaggle/access_token (API token),
    KAGGLE_USERNAME + KAGGLE_KEY over kaggle.json in $KAGGLE_CONFIG_DIR, ~/.kaggle or
    ~/.config/kaggle (legacy key), ~/.kaggle/credentials.json (`kaggle auth login`).
    A kaggle.json that is not valid JSON or lacks its keys is a UsageError naming the file.
    """
    env = os.environ if env is None else env
    home = Path(os.path.expanduser("~")) if home is None else home
    if env.get("KAGGLE_API_TOKEN"):
        return "the KAGGLE_API_TOKEN environment variable"
    for token_file in (home / ".kaggle" / "access_token", home / ".kaggle" / "access_token.txt"):
        if token_file.is_file() and token_file.stat().st_size > 0:
            return str(token_file)

    legacy: dict[str, str] = {}
    config_file = _kaggle_json(env, home)
    if config_file is not None:
        legacy.update(_read_kaggle_json(config_file))
    from_env = {k: env[v] for k, v in (("username", "KAGGLE_USERNAME"), ("key", "KAGGLE_KEY")) if env.get(v)}
    legacy.update(from_env)
    if legacy.get("username") and legacy.get("key"):
        if config_file is not None and not from_env.keys() >= {"username", "key"}:
            _warn_if_readable(config_file)
            return str(config_file)
        return "the KAGGLE_USERNAME and KAGGLE_KEY environment variables"
    if from_env:
        missing = "KAGGLE_KEY" if "key" not in legacy else "KAGGLE_USERNAME"
        raise UsageError(f"Incomplete Kaggle credentials: {missing} is not set",
                         "set both KAGGLE_USERNAME and KAGGLE_KEY, or use ~/.kaggle/kaggle.json")

    oauth = home / ".kaggle" / "credentials.json"
    if oauth.is_file():
        return f"{oauth} (kaggle auth login)"
    return None


def _kaggle_json(env: Mapping[str, str], home: Path) -> Path | None:
    if env.get("KAGGLE_CONFIG_DIR"):
        candidates = [Path(env["KAGGLE_CONFIG_DIR"]).expanduser() / "kaggle.json"]
    else:
        xdg = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
        candidates = [home / ".kaggle" / "kaggle.json", xdg / "kaggle" / "kaggle.json"]
    return next((c for c in candidates if c.is_file()), None)


def _read_kaggle_json(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError) as exc:
        raise UsageError(f"Cannot read Kaggle credentials file {path}: {exc}",
                         'it must be JSON like {"username": "...", "key": "..."}; download it again from '
                         "https://www.kaggle.com/settings") from None
    if not isinstance(data, dict) or not (data.get("username") and data.get("key")):
        raise UsageError(f"Kaggle credentials file {path} lacks 'username' or 'key'",
                         'it must be JSON like {"username": "...", "key": "..."}; download it again from '
                         "https://www.kaggle.com/settings")
    return {"username": str(data["username"]), "key": str(data["key"])}


def _warn_if_readable(path: Path) -> None:
    if os.name != "nt" and path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning("⚠️  %s is readable by other users: run  chmod 600 %s", path, path)


def require_credentials() -> str:
    """The credential source, or a UsageError (exit 2) with the set-up instructions."""
    where = find_credentials()
    if where is None:
        raise UsageError("No Kaggle credentials found.\n" + CREDENTIAL_HELP)
    return where


# --------------------------------------------------------------------------- the kaggle client (network)


def _kaggle_client() -> Any:
    """An authenticated `KaggleApi`. Imported late: `import kaggle` authenticates at import time."""
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi
    except ImportError as exc:
        raise UsageError(f"The kaggle client is not installed ({exc})",
                         "install the pinned requirements: make venv (or pip install -r requirements.txt)") from None
    api = KaggleApi()
    try:
        api.authenticate()
    except SystemExit:  # the client prints its own help and calls exit(1) on failure
        raise UsageError("The kaggle client rejected the credentials.\n" + CREDENTIAL_HELP) from None
    except Exception as exc:
        _raise_network_or(exc, "authenticating with Kaggle")
    return api


def _fetch_archive(api: Any, plan: DownloadPlan) -> Path:
    """Have the client fetch (or finish fetching) the dataset zip; return its path."""
    plan.archive_dir.mkdir(parents=True, exist_ok=True)
    try:
        api.dataset_download_files(plan.slug, path=str(plan.archive_dir), force=False, quiet=False, unzip=False)
    except Exception as exc:
        _raise_network_or(exc, f"downloading {plan.slug}")
    expected = plan.archive_dir / f"{plan.slug.split('/')[1]}.zip"
    if expected.is_file():
        return expected
    zips = sorted(plan.archive_dir.glob("*.zip"))
    if len(zips) == 1:
        return zips[0]
    raise RunFailed(f"The kaggle client finished {plan.slug} but no single archive is in {plan.archive_dir}",
                    f"delete {plan.archive_dir} and re-run")


def _raise_network_or(exc: Exception, doing: str) -> None:
    """Turn client exceptions into messages a user can act on (always raises)."""
    try:
        import requests
    except ImportError:  # pragma: no cover - requests comes with kaggle
        requests = None  # type: ignore[assignment]
    if requests is not None and isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        raise NetworkDown(f"No network: could not reach kaggle.com while {doing} ({type(exc).__name__}).",
                        "check the internet connection (and HTTPS_PROXY if you use a proxy), then re-run: "
                        "finished sources are skipped and a partial archive is resumed") from None
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status in (401, 403):
        raise RunFailed(f"Kaggle refused access while {doing} (HTTP {status}).",
                        "check your credentials, and open the dataset's page on kaggle.com once to accept "
                        "its terms if it asks you to") from None
    if status == 404:
        raise RunFailed(f"Kaggle has no dataset for {doing} (HTTP 404).",
                        "check the source's `kaggle:` slug against the dataset's URL") from None
    raise RunFailed(f"The kaggle client failed while {doing}: {type(exc).__name__}: {exc}") from exc


# --------------------------------------------------------------------------- unpacking (local)


def unpack_archive(archive: Path, target: Path, *, desc: str | None = None) -> int:
    """Extract a zip into `target` (created fresh), safely. Returns the number of files written.

    Every member path is checked before anything is written; links are skipped; CRCs are
    verified as members are read. Corruption raises ArchiveError naming the archive.
    """
    if target.exists():
        shutil.rmtree(target)
    try:
        with zipfile.ZipFile(archive) as zf:
            members = []
            for info in zf.infolist():
                try:
                    rel = safe_member_path(info.filename)
                except ArchiveError as exc:
                    raise ArchiveError(f"Refusing to unpack {archive}: it holds an unsafe member, {exc}",
                                       "the archive is not trustworthy: delete it and re-run") from None
                if rel.parts and rel.parts[0] in SKIPPED_MEMBER_DIRS:
                    continue
                if stat.S_ISLNK(info.external_attr >> 16):
                    log.warning("Skipping link %s in %s", info.filename, archive.name)
                    continue
                members.append((info, rel))
            _check_free_space(target.parent, sum(i.file_size for i, _ in members), archive)
            target.mkdir(parents=True)
            written = 0
            with tqdm(total=sum(i.file_size for i, _ in members), unit="B", unit_scale=True,
                      desc=desc or f"Unpacking {archive.name}", leave=False) as bar:
                for info, rel in members:
                    out = target / rel
                    try:
                        if info.is_dir() or not rel.parts:
                            out.mkdir(parents=True, exist_ok=True)
                            continue
                        out.parent.mkdir(parents=True, exist_ok=True)
                        with zf.open(info) as src, open(out, "wb") as dst:
                            shutil.copyfileobj(src, dst, 1 << 20)
                    except OSError as exc:
                        raise RunFailed(f"Could not write {out} while unpacking {archive}: {exc}",
                                        "check free disk space and permissions, then re-run") from None
                    written += 1
                    bar.update(info.file_size)
            return written
    # RuntimeError: an encrypted member; NotImplementedError: an unsupported compression method.
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        raise ArchiveError(f"Corrupt or unreadable archive {archive}: {exc}",
                           f"delete it (rm {_quote(archive)}) and re-run the download") from None


def _check_free_space(folder: Path, needed: int, archive: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise RunFailed(f"Not enough disk space to unpack {archive.name}: needs {needed / 1e9:.1f} GB, "
                        f"{free / 1e9:.1f} GB free in {folder}", "free some space and re-run")


def _quote(path: Path) -> str:
    text = str(path)
    return f"'{text}'" if re.search(r"\s", text) else text


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
        api = _kaggle_client()

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
    archive = _fetch_archive(api, plan)
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
                  archive_sha256=_sha256(archive), files=files)
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
