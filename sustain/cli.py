"""Command line: `sustain …` and `python -m sustain …` (SPEC §8).

Each command parses its arguments, calls one function of the package and
maps `SustainError` to its exit code (0 ok, 1 failed run/check, 2 bad usage,
config or input). Heavy imports happen inside the commands so `--help` is fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from .errors import SustainError
from .utils import setup_logging

log = logging.getLogger("sustain")

# MPS needs this before torch is imported; harmless elsewhere.
os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")


def _config_from_args(args: argparse.Namespace):
    from .config import load_config

    overrides = list(args.set or [])
    if getattr(args, "output", None):
        overrides.append(f"output_dir={args.output}")
    return load_config(args.config, overrides)


# --------------------------------------------------------------------------- commands


def cmd_train(args: argparse.Namespace) -> int:
    cfg = _config_from_args(args)  # config errors first, before heavy imports
    from .training import train

    result = train(cfg, resume=args.resume)
    return 0 if result.ok else 1


def cmd_crossval(args: argparse.Namespace) -> int:
    cfg = _config_from_args(args)  # config errors first, before heavy imports
    from .training import CrossvalOptions, run_crossval

    run_crossval(cfg, CrossvalOptions(scheme=args.by, folds=args.folds, resume=args.resume, only_fold=args.fold,
                                  summarize_only=args.summarize, min_images=args.min_images))
    return 0


def cmd_data_ingest(args: argparse.Namespace) -> int:
    cfg = _config_from_args(args)  # config errors first, before heavy imports
    from .data import ingest
    from .taxonomy import build_taxonomy

    ingest(cfg, build_taxonomy(**cfg.taxonomy.model_dump()), out_dir=cfg.output_dir)
    return 0


def cmd_data_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .data import make_demo_lake

    out = Path(args.out)
    if args.if_missing and out.is_dir() and any(out.iterdir()):
        log.info("✓ Demo data lake already present at %s", out)
        return 0
    stats = make_demo_lake(out, seed=args.seed, per_class=args.per_class)
    log.info("✓ Demo data lake written to %s (%d files)", out, stats["files"])
    return 0


def cmd_data_download(args: argparse.Namespace) -> int:
    cfg = _config_from_args(args)  # config errors first, before heavy imports
    from .data import download_sources

    return 0 if download_sources(cfg, only=args.only) else 1


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .deploy import evaluate_checkpoint

    evaluate_checkpoint(args.checkpoint, split=args.split, data_dir=args.data, label_map=args.label_map)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .deploy import predict_cli

    return predict_cli(args.checkpoint, args.inputs, topk=args.topk, tta=args.tta, as_json=args.json,
                       as_csv=args.csv, backend=args.backend)


def cmd_export(args: argparse.Namespace) -> int:
    from .deploy import export_run

    export_run(args.run, formats=args.format or ["onnx"], quantize=args.quantize, split=args.split,
               out=args.out, verify=not args.no_verify)  # a failed parity gate raises RunFailed: exit 1
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .deploy import serve_cli

    return serve_cli(args.model, args.backend, host=args.host, port=args.port, max_batch=args.max_batch,
                     max_wait_ms=args.max_wait_ms, topk=args.topk, token_file=args.token_file,
                     max_images=args.max_images, max_upload_mb=args.max_upload_mb, max_pixels=args.max_pixels)


def cmd_report(args: argparse.Namespace) -> int:
    from .report import build_report

    path = build_report(args.run_dir)
    log.info("✓ Report written: %s", path)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .report import compare_cli

    return compare_cli(args.run_dirs, html_path=args.html)


def cmd_doctor(args: argparse.Namespace) -> int:
    from .diagnostics import run_cli

    return run_cli(config=args.config, as_json=args.json)


# --------------------------------------------------------------------------- parser

USAGE_SUMMARY = """\
commands:
  sustain train --config FILE [--set k=v ...] [--resume auto|PATH] [--output DIR]
  sustain crossval --config FILE [--folds K | --by source] [--fold I | --summarize] [--resume auto]
                                             K trainings: accuracy on unseen images or sources, with intervals
  sustain data ingest --config FILE          build and print the data summary and manifest
  sustain data demo --out DIR                generate the procedural demo lake
  sustain data download --config FILE        fetch the Kaggle sources (your own credentials)
  sustain evaluate --checkpoint PATH [--split val|test|train] [--data DIR]
  sustain predict --checkpoint PATH [--checkpoint PATH ...] IMAGE_OR_DIR... [--topk K] [--tta] [--json] [--backend torch|onnx]
  sustain export RUN_DIR|CHECKPOINT [--format onnx|coreml] [--quantize int8] [--split test|val] [--out DIR] [--no-verify]
  sustain serve RUN_DIR|EXPORT_DIR [--backend onnx|torch] [--host 127.0.0.1] [--port 8000] [--max-batch N] [--max-wait-ms M] [--token-file FILE]
  sustain report RUN_DIR                     rebuild the plots and report.html
  sustain compare RUN_DIR RUN_DIR... [--html FILE]   runs side by side; reproducibility of two reruns
  sustain doctor [--config FILE] [--json]    environment diagnostics

exit codes: 0 success, 1 failed run or check, 2 bad usage, config or input
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sustain",
        description="Train, check and deploy a waste-sorting image classifier.",
        epilog=USAGE_SUMMARY,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # One function a group, called in the order `sustain --help` lists the commands.
    _add_train(sub)
    _add_crossval(sub)
    _add_data(sub)
    _add_model_commands(sub)
    _add_serve(sub)
    _add_run_commands(sub)
    return parser


def _with_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML config, e.g. configs/demo.yaml")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=3 (repeatable)")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model from a config")
    _with_config(p)
    p.add_argument("--resume", metavar="auto|PATH", help="resume from last.pth in the output folder, or a checkpoint")
    p.add_argument("--output", metavar="DIR", help="output folder (overrides output_dir)")
    p.set_defaults(func=cmd_train)


def _add_crossval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("crossval", help="cross-validate: k-fold or leave-one-source-out, one training per fold")
    _with_config(p)
    p.add_argument("--folds", type=int, default=5, metavar="K", help="k-fold: the number of folds (default 5)")
    p.add_argument("--by", choices=["kfold", "source"], default="kfold",
                   help="kfold (default), or source: hold out each source in turn")
    p.add_argument("--fold", type=int, metavar="I", help="run fold I only (e.g. one task of a SLURM job array)")
    p.add_argument("--summarize", action="store_true", help="train nothing: build the summary of the finished folds")
    p.add_argument("--resume", choices=["auto"], help="skip finished folds, continue an interrupted one at its batch")
    p.add_argument("--min-images", type=int, default=20, metavar="N",
                   help="--by source: fine-labelled images a source needs to be held out (default 20)")
    p.add_argument("--output", metavar="DIR", help="output folder (overrides output_dir); results in DIR/crossval/")
    p.set_defaults(func=cmd_crossval)


def _add_data(sub: argparse._SubParsersAction) -> None:
    """`sustain data ingest|demo|download`."""
    data = sub.add_parser("data", help="data lake: ingest, demo, download")
    data_sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    p = data_sub.add_parser("ingest", help="scan the sources, write manifest.csv and the data summary")
    _with_config(p)
    p.add_argument("--output", metavar="DIR", help="where to write the manifest (overrides output_dir)")
    p.set_defaults(func=cmd_data_ingest)
    p = data_sub.add_parser("demo", help="generate the procedural demo data lake")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-class", type=int, default=None, help="images per class in the master-layout source")
    p.add_argument("--if-missing", action="store_true", help="do nothing if DIR already holds files")
    p.set_defaults(func=cmd_data_demo)
    p = data_sub.add_parser("download", help="fetch the config's Kaggle sources with your own credentials")
    _with_config(p)
    p.add_argument("--only", nargs="+", metavar="NAME", help="only these sources")
    p.set_defaults(func=cmd_data_download)
    data.set_defaults(func=lambda a: _missing_subcommand(data))


def _add_model_commands(sub: argparse._SubParsersAction) -> None:
    """What a trained checkpoint is used for: `sustain evaluate`, `predict`, `export`."""
    p = sub.add_parser("evaluate", help="score a checkpoint on its val/test split or on a labelled folder")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--split", choices=["val", "test", "train", "ood"], default="val",
                   help="ood: the held-out sources of data.split.holdout_sources")
    p.add_argument("--data", metavar="DIR", help="a folder of labelled images (<class>/<image>) to score instead")
    p.add_argument("--label-map", metavar="YAML", help="with --data: a YAML {folder: class} mapping")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="classify images with one or more checkpoints")
    p.add_argument("--checkpoint", action="append", required=True, help="repeat to average an ensemble")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--topk", type=int, default=3)
    p.add_argument("--tta", action="store_true", help="average with the horizontally flipped image")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="one JSON object per line")
    fmt.add_argument("--csv", action="store_true", help="CSV with a header: input, class, probability, bin, "
                     "decision, topk, error")
    p.add_argument("--backend", choices=["torch", "onnx"], default="torch",
                   help="onnx: run the exported model.onnx (see `sustain export`) in ONNX Runtime")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="export a trained model (ONNX, a timm model folder) and check its parity")
    p.add_argument("run", metavar="RUN_DIR|CHECKPOINT")
    p.add_argument("--format", action="append", metavar="onnx|coreml",
                   help="repeatable; default onnx (coreml needs `pip install coremltools`)")
    p.add_argument("--quantize", choices=["int8"], help="also write model_int8.onnx (dynamic quantisation), gated too")
    p.add_argument("--split", choices=["test", "val"], default="test", help="the held-out split of the parity gate")
    p.add_argument("--out", metavar="DIR", help="default: RUN_DIR/export")
    p.add_argument("--no-verify", action="store_true", help="skip the parity gate (not recommended)")
    p.set_defaults(func=cmd_export)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="the model behind an HTTP API and a page to try photos (docs/deploy.md)")
    p.add_argument("model", metavar="RUN_DIR|EXPORT_DIR", help="a run folder, its export/ folder or a .onnx file")
    p.add_argument("--backend", choices=["onnx", "torch"], default="onnx",
                   help="onnx: the exported model.onnx (default); torch: the run's checkpoint")
    p.add_argument("--host", default="127.0.0.1", help="any address but loopback needs --token-file")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=16, help="images per forward pass at most")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a first image waits for company")
    p.add_argument("--token-file", metavar="FILE", help="requests then need 'Authorization: Bearer <token>'")
    p.add_argument("--topk", type=int, default=3)
    p.add_argument("--max-images", type=int, default=16, help="images in one request at most")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="request body size limit")
    p.add_argument("--max-pixels", type=int, default=50_000_000, help="pixels of one image at most (checked before decoding)")
    p.set_defaults(func=cmd_serve)


def _add_run_commands(sub: argparse._SubParsersAction) -> None:
    """Looking at runs and at the machine: `sustain report`, `compare`, `doctor`."""
    p = sub.add_parser("report", help="rebuild the plots and report.html of a run folder")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("compare", help="runs side by side: config differences, metrics, per-class F1, time")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--html", metavar="FILE", help="also write a self-contained page with the overlaid curves")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("doctor", help="check the environment (same as training_diagnostics.py)")
    p.add_argument("--config")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_doctor)


def _missing_subcommand(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help
        return int(exc.code or 0)
    setup_logging(args.verbose)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return func(args)
    except SustainError as exc:
        log.error("❌ %s", exc)
        return exc.exit_code
    except KeyboardInterrupt:
        log.error("Interrupted.")
        return 130
    except ModuleNotFoundError as exc:
        log.error("❌ The Python package %r is missing from this environment", exc.name)
        log.error("  → run `make venv` and use .venv/bin/sustain, or run `bash fix_environment.sh`")
        return 1
    except Exception as exc:  # a bug or a broken environment: one clear line, the traceback on request
        log.error("❌ Unexpected error in `sustain %s`: %s: %s", args.command, type(exc).__name__, exc)
        if args.verbose:
            log.exception("Traceback:")
        else:
            log.error("  → rerun with -v for the traceback; `sustain doctor` checks the environment")
        return 1


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
