"""Everything the eval transform uses travels with the model (issue 10, item 5)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from sustain.config import config_from_dict
from sustain.data.dataset import ManifestDataset, collate_skip_failed
from sustain.data.manifest import ManifestRow
from sustain.deploy.inference import Predictor
from sustain.evaluate import collect_predictions
from sustain.model import build_model
from sustain.taxonomy import build_taxonomy
from sustain.training.checkpoints import export_meta, save_best, state_dict_copy
from sustain.transforms import build_eval_transform, resolve_data_config

SIZE = 32


def _cfg(crop_mode: str):
    return config_from_dict({
        "data": {"root": ".", "sources": [{"name": "s", "root": ".", "label_map": "identity"}]},
        "model": {"name": "test_vit", "pretrained": False, "input_size": SIZE, "crop_mode": crop_mode,
                  "drop_path_rate": 0.0}})


def test_predictor_and_final_evaluation_agree_for_a_squash_crop_model(tmp_path):
    taxonomy = build_taxonomy()
    cfg = _cfg("squash")
    torch.manual_seed(0)
    model = build_model(cfg.model, taxonomy.num_classes).eval()
    data_config = resolve_data_config(model, cfg.model)
    meta = export_meta(cfg.model, taxonomy, data_config, "hash")
    for key in ("crop_mode", "crop_pct", "interpolation", "mean", "std", "input_size"):
        assert key in meta
    assert meta["crop_mode"] == "squash"
    save_best(tmp_path / "run", state_dict_copy(model), {**meta, "epoch": 1, "val_acc": 0.5})

    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):  # wide images: a centre crop and a squash see different pixels
        pixels = rng.integers(0, 256, (24, 96, 3), dtype=np.uint8)
        pixels[:, :24] = rng.integers(0, 256, 3, dtype=np.uint8)  # the left edge: cut off by a centre crop
        paths.append(tmp_path / f"img_{i}.png")
        Image.fromarray(pixels).save(paths[-1])

    # The final evaluation: the eval transform of the model's data config, through the engine's dataset.
    rows = [ManifestRow(path=str(p), source="s", label="eggshells", targets=(taxonomy.index("eggshells"),),
                        split="test", content_hash=str(i), group=i) for i, p in enumerate(paths)]
    loader = DataLoader(ManifestDataset(rows, taxonomy.num_classes, ["s"], build_eval_transform(data_config)),
                        batch_size=4, collate_fn=collate_skip_failed)
    final = torch.softmax(collect_predictions(model, loader, "cpu", False).logits.float(), dim=1).numpy()

    predictor = Predictor.from_checkpoint(tmp_path / "run", device="cpu")
    k = taxonomy.num_classes
    got = np.array([[dict(p.topk)[c] for c in taxonomy.classes] for p in predictor.predict(paths, topk=k)])
    np.testing.assert_allclose(got, final, atol=1e-5)

    centre = build_eval_transform({**data_config, "crop_mode": "center"})  # what the old checkpoints did
    assert not torch.allclose(centre(Image.open(paths[0]).convert("RGB")),
                              build_eval_transform(data_config)(Image.open(paths[0]).convert("RGB")))
