"""The error gallery's cost next to the final evaluation it follows, on one machine in one run.

    python benchmarks/bench_gallery.py                     # 10,000 val images, test_vit at 64 px
    python benchmarks/bench_gallery.py --images 2000 --model eva02_tiny_patch14_224 --size 224

Writes N JPEG photos (200-400 px) with random labels over master_30 (5% set
labels, two sources), then times:
- the final evaluation: ``write_final_evaluation`` of the val split (decode,
  transform, forward, reports, and the per-sample store ``predictions_val.npz``);
- the store alone: writing ``predictions_val.npz`` again (part of the above);
- the gallery: ``build_gallery(run)`` (load the store, select, thumbnails, HTML)
  plus ``suspect_labels.csv``, exactly what `sustain report` adds.

The model's head is scaled so an untrained model is confidently wrong: every
gallery section is full (top mistakes, pairs, suspects), the worst case for
thumbnails. The smallest model is the default because it makes the final
evaluation shortest, so the ratio largest. Prints the times and
``(store + gallery) / (final evaluation - store)``; the target is ≤ 10%.
Writes benchmarks/results/bench_gallery.json.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

if not __package__:  # run as a script: the project root on sys.path, for `benchmarks` and `sustain`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import arg_parser, results_file, write_result  # noqa: E402
from sustain.data.dataset import ManifestDataset, collate_skip_failed  # noqa: E402
from sustain.data.manifest import ManifestRow  # noqa: E402
from sustain.evaluate import write_final_evaluation  # noqa: E402
from sustain.evaluate.gallery import (  # noqa: E402
    SUSPECTS_CSV,
    load_predictions,
    predictions_file,
    save_predictions,
    write_suspects_csv,
)
from sustain.report.gallery_html import build_gallery  # noqa: E402
from sustain.taxonomy import build_taxonomy  # noqa: E402
from sustain.transforms import build_eval_transform  # noqa: E402

RESULTS = results_file("bench_gallery")
TARGET = 0.10


def write_rows(folder: Path, n: int, seed: int = 0) -> list[ManifestRow]:
    taxonomy = build_taxonomy()
    plastic = taxonomy.resolve("PLASTIC")
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        w, h = int(rng.integers(200, 400)), int(rng.integers(200, 400))
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        pixels[: h // 2] = rng.integers(0, 256, 3, dtype=np.uint8)
        path = folder / f"img_{i:05d}.jpg"
        Image.fromarray(pixels).save(path, quality=85)
        targets = plastic if rng.random() < 0.05 else (int(rng.integers(0, taxonomy.num_classes)),)
        rows.append(ManifestRow(path=str(path), source=f"source_{i % 2}", label=taxonomy.label_name(targets),
                                targets=tuple(targets), split="val", content_hash=f"h{i}", group=i))
    return rows


def run(argv: list[str]) -> dict:
    p = arg_parser(__doc__)
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--model", default="test_vit")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)

    import timm

    taxonomy = build_taxonomy()
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False, num_classes=taxonomy.num_classes, img_size=args.size)
    with torch.no_grad():
        model.get_classifier().weight.mul_(50.0)  # confidently wrong: every gallery section full
    data_config = {"input_size": (3, args.size, args.size), "mean": (0.5,) * 3, "std": (0.5,) * 3,
                   "interpolation": "bicubic", "crop_pct": 0.875}
    with tempfile.TemporaryDirectory(prefix="bench-gallery-") as tmp:
        t = time.perf_counter()
        rows = write_rows(Path(tmp) / "photos", args.images)
        print(f"wrote {len(rows)} photos in {time.perf_counter() - t:.1f}s", flush=True)
        sources = ["source_0", "source_1"]
        loader = torch.utils.data.DataLoader(
            ManifestDataset(rows, taxonomy.num_classes, sources, build_eval_transform(data_config)),
            batch_size=args.batch_size, shuffle=False, num_workers=args.workers, collate_fn=collate_skip_failed)
        run_dir = Path(tmp) / "run"

        t = time.perf_counter()
        write_final_evaluation(model, {"val": loader}, taxonomy, sources, run_dir, "cpu")
        final = time.perf_counter() - t

        store = load_predictions(run_dir / predictions_file("val"))
        t = time.perf_counter()
        save_predictions(run_dir / predictions_file("val"), store)
        store_s = time.perf_counter() - t

        t = time.perf_counter()
        gallery = build_gallery(run_dir)
        write_suspects_csv(run_dir / SUSPECTS_CSV, gallery.suspects)
        gallery_s = time.perf_counter() - t
        store_bytes = (run_dir / predictions_file("val")).stat().st_size

    ratio = (store_s + gallery_s) / (final - store_s)
    result = {
        "images": args.images, "model": args.model, "size": args.size, "workers": args.workers,
        "threads": torch.get_num_threads(),
        "final_evaluation_s": round(final, 3), "store_write_s": round(store_s, 3), "gallery_s": round(gallery_s, 3),
        "store_mb": round(store_bytes / 1e6, 2), "thumbnails_mb": round(gallery.thumbnails_bytes / 1e6, 2),
        "suspects": len(gallery.suspects), "ratio": round(ratio, 4), "target": TARGET,
    }
    print(f"final evaluation {final:.1f}s ({args.images / final:.0f} images/s); store {store_s:.2f}s "
          f"({result['store_mb']} MB); gallery + CSV {gallery_s:.2f}s ({result['thumbnails_mb']} MB of thumbnails, "
          f"{len(gallery.suspects)} suspects)")
    print(f"gallery overhead: {100 * ratio:.1f}% of the final evaluation (target ≤ {100 * TARGET:.0f}%)")
    write_result(RESULTS, result)
    return result


def main(argv: list[str]) -> int:
    return 0 if run(argv)["ratio"] <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
