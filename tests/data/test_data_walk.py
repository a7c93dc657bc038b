"""One walk and one labelling for ingestion, `count_images`, `sustain evaluate --data` and
`sustain predict DIR` (issue 10, item 4): one tree through all four."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from sustain.config import SourceConfig, config_from_dict
from sustain.data.labels import compile_label_map
from sustain.data.lake import ingest
from sustain.data.walk import count_images
from sustain.deploy.inference import expand_inputs
from sustain.evaluate import labelled_folder_rows
from sustain.taxonomy import build_taxonomy

IMAGES = ["aerosol_cans/a.png", "aerosol_cans/default/b.jpg", "aerosol_cans/real_world/deep/c.JPEG",
          "eggshells/d.webp", "eggshells/train/e.bmp"]
LITTER = ["aerosol_cans/._a.png", "aerosol_cans/.hidden.png", ".DS_Store", "eggshells/Thumbs.db",
          "__MACOSX/eggshells/._d.webp", "__MACOSX/eggshells/f.png", ".thumbnails/g.png", "eggshells/notes.txt"]


def _tree(root: Path) -> None:
    rng = np.random.default_rng(0)
    for rel in IMAGES + LITTER:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if Path(rel).suffix.lower() in {".png", ".jpg", ".jpeg", ".webp", ".bmp"}:
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
                path, format={".jpg": "JPEG", ".jpeg": "JPEG"}.get(path.suffix.lower(), path.suffix[1:].upper()))
        else:
            path.write_bytes(b"\x00\x05\x16\x07 not data")


def test_one_tree_gives_the_same_files_and_labels_in_every_entry_point(tmp_path) -> None:
    root = tmp_path / "tree"
    _tree(root)
    taxonomy = build_taxonomy()
    want = {str(root / rel): rel.split("/")[0] for rel in IMAGES}

    cfg = config_from_dict({"data": {"root": str(root), "cache_dir": str(tmp_path / "cache"), "ingest_workers": 1,
                                     "split": {"train": 1.0, "val": 0.0, "test": 0.0},
                                     "sources": [{"name": "s", "root": ".", "label_map": "identity"}]}})
    lake = ingest(cfg, taxonomy, log_summary=False)
    assert {r.path: r.label for r in lake.rows} == want
    assert lake.data_summary.other_files == 1  # notes.txt: counted; OS litter is not even that

    label_map = compile_label_map(SourceConfig(name="s", root=".", label_map="identity"), taxonomy)
    counted = count_images(root, label_map, [])
    assert (counted.images, counted.labelled, counted.unmapped) == (len(IMAGES), len(IMAGES), 0)

    rows, _ = labelled_folder_rows(root, taxonomy)
    assert {r.path: r.label for r in rows} == want

    assert expand_inputs(root) == sorted(want)
