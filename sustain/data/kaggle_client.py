"""The Kaggle side of `sustain data download`: finding the user's credentials and the official client.

The network call (`KaggleApi.dataset_download_files`) is the only thing the
tests fake; its failures become messages a user can act on, and an unreachable
kaggle.com is `NetworkDown` (every remaining source would fail the same way).
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import RunFailed, UsageError

log = logging.getLogger("sustain.data.kaggle_client")

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


class NetworkDown(RunFailed):
    """kaggle.com cannot be reached: every remaining source would fail the same way."""


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


def kaggle_api() -> Any:
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


def fetch_archive(api: Any, slug: str, archive_dir: Path) -> Path:
    """Have the client fetch (or finish fetching) dataset `slug`'s zip into `archive_dir`; return its path."""
    archive_dir.mkdir(parents=True, exist_ok=True)
    try:
        api.dataset_download_files(slug, path=str(archive_dir), force=False, quiet=False, unzip=False)
    except Exception as exc:
        _raise_network_or(exc, f"downloading {slug}")
    expected = archive_dir / f"{slug.split('/')[1]}.zip"
    if expected.is_file():
        return expected
    zips = sorted(archive_dir.glob("*.zip"))
    if len(zips) == 1:
        return zips[0]
    raise RunFailed(f"The kaggle client finished {slug} but no single archive is in {archive_dir}",
                    f"delete {archive_dir} and re-run")


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
