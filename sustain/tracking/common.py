"""What both tracking backends share: which files and numbers a run reports, and where MLflow lives."""

from __future__ import annotations

import math
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .. import artifacts
from ..config import TrackingConfig
from ..errors import UsageError

CONNECT_TIMEOUT = 3.0  # seconds for the start-up check of a server
ARTIFACTS = (artifacts.REPORT_HTML, artifacts.CURVES_PNG, artifacts.CONFUSION_PNG, artifacts.F1_PNG,
             artifacts.EXPORT_META, artifacts.RUN, artifacts.HISTORY, artifacts.VAL_REPORT, artifacts.TEST_REPORT,
             artifacts.OOD_REPORT)
WEIGHTS = artifacts.EXPORT_WEIGHTS


def mlflow_uri(tracking: TrackingConfig, output_dir: str | Path) -> str:
    """The configured URI, or the embedded SQLite store beside the run folders (`<parent>/mlflow.db`)."""
    if tracking.mlflow.tracking_uri:
        return tracking.mlflow.tracking_uri
    return f"sqlite:///{Path(output_dir).expanduser().resolve().parent / 'mlflow.db'}"


def check_reachable(uri: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """An http(s) tracking server must answer (any HTTP status) within `timeout`, else a UsageError."""
    import urllib.error
    import urllib.request

    if urlsplit(uri).scheme not in ("http", "https"):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return  # it answered: auth or routing is MLflow's business
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UsageError(f"MLflow tracking server {uri} cannot be reached: {reason}",
                         "start the server, fix tracking.mlflow.tracking_uri, or set "
                         "tracking.mlflow.enabled=false (the embedded store needs no server)") from None


def data_params(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The data summary's key numbers: images per split, source and class; duplicates; corrupt files."""
    dup = summary.get("duplicates") or {}
    out: dict[str, Any] = {"data.total_images": summary.get("total_images"),
                           "data.manifest_hash": summary.get("manifest_hash"),
                           "data.duplicates_merged": dup.get("exact_merged"),
                           "data.near_duplicate_images": dup.get("near_duplicate_images"),
                           "data.corrupt": (summary.get("corrupt") or {}).get("total"),
                           "data.imbalance_ratio": summary.get("imbalance_ratio")}
    out.update({f"data.split.{k}": v for k, v in (summary.get("splits") or {}).items()})
    out.update({f"data.source.{k}": v.get("images") for k, v in (summary.get("sources") or {}).items()})
    out.update({f"data.class.{k}": v.get("total") for k, v in (summary.get("classes") or {}).items()})
    return out


def final_metrics(reports: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """`{split}.acc`, `.macro_f1`, `.f1.<class>`, `.source_acc.<source>`, `.bin_acc.<bin>` from the reports."""
    out: dict[str, float] = {}
    for split, r in reports.items():
        out[f"final.{split}.acc"] = r.get("accuracy")
        out[f"final.{split}.macro_f1"] = r.get("macro_f1")
        out[f"final.{split}.set_acc"] = r.get("set_accuracy")
        for c in r.get("classes") or []:
            out[f"final.{split}.f1.{c}"] = (r.get(c) or {}).get("f1-score")
        for s, v in (r.get("per_source_accuracy") or {}).items():
            out[f"final.{split}.source_acc.{s}"] = v.get("acc")
        bins = r.get("bin_accuracy") or {}
        out[f"final.{split}.bin_acc"] = bins.get("acc")
        for b, v in (bins.get("per_bin") or {}).items():
            out[f"final.{split}.bin_acc.{b}"] = v.get("acc")
    return {k: float(v) for k, v in out.items() if finite(v)}


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def safe_key(name: str) -> str:
    """MLflow keys allow letters, digits, _ - . / and space; class names may hold anything."""
    return "".join(ch if ch.isalnum() or ch in "_-./ " else "_" for ch in name)


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"version.python": platform.python_version()}
    for name in ("torch", "torchvision", "timm", "numpy", "sustain"):
        try:
            out[f"version.{name}"] = version(name)
        except PackageNotFoundError:
            out[f"version.{name}"] = "unknown"
    return out
