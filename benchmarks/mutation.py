"""Mutation testing of the pure decision modules with mutmut (a dev tool, outside CI; issue #27).

Usage (the `make mutation` target; an hour or more on two busy cores, under `nice`):

    nice -n 19 python -m benchmarks.mutation                      # every module, then the JSON
    nice -n 19 python -m benchmarks.mutation --modules guards metrics
    python -m benchmarks.mutation --report-only                   # the JSON from the last run's mutants/

A run of some modules (`--modules`, with or without --report-only) rewrites their entries and keeps
the others' from the existing JSON, each with the run that measured it (`measured_by`).

mutmut 3 (settings in pyproject.toml, `[tool.mutmut]`) copies sustain/ and the tests into
mutants/, rewrites each function of a mutated file into its mutants, records which of the
selected fast tests call which function, and runs only those tests per mutant. This script
runs it module by module (the functions in scope), then reads the verdicts from
mutants/*.meta and writes benchmarks/results/mutation.json: per module the mutants, killed,
survived, the survivors judged equivalent (each with its reason, from `EQUIVALENT`) and the
survivors left, with each one's line and diff.

The score: killed / (mutants - equivalent - not run). A timeout counts as killed (the mutant
hung the tests); a mutant no selected test reaches ("no tests") counts as survived.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, arg_parser, results_file, write_result

GOAL = 0.85

# Each module: its file and the functions in scope (None: every function of the file). Edges
# out of scope are named with the reason.
MODULES: dict[str, dict[str, Any]] = {
    "split": {"file": "sustain/data/split.py", "functions": None},
    "folds": {"file": "sustain/data/folds.py", "functions": None},
    "guards": {"file": "sustain/training/guards.py", "functions": None},
    "device": {"file": "sustain/device.py",
               "functions": ["plan_device", "plan_precision", "_plan_cpu_auto", "plan_channels_last",
                             "plan_num_workers", "plan_cpu", "_step", "_seconds", "_best_cpu_plan",
                             "cpu_native_bf16", "wants_bf16_probe", "Bf16Probe.failure", "Bf16Probe.summary",
                             "Bf16Probe.to_dict", "PrecisionPlan.record"],
               "out_of_scope": {"detect_backends, cpu_flags, cpu_model_name, in_jupyter, apply_backend_flags, "
                                "resolve_device": "the edges that ask the hardware or flip process-wide switches "
                                                  "(SPEC §6: the plans are the decisions)"}},
    "precision": {"file": "sustain/training/precision.py", "functions": None},
    "cpu_plan": {"file": "sustain/training/cpu_plan.py", "functions": None},
    "interrupts": {"file": "sustain/training/interrupts.py", "functions": None},
    "metrics": {"file": "sustain/evaluate/metrics.py", "functions": None},
    "loop_state": {"file": "sustain/training/loop_state.py", "functions": ["decide", "is_improvement"],
                   "out_of_scope": {"LoopState, EpochProgress, update_groups, now": "the loop's state and "
                                    "bookkeeping; issue #27 names its decisions, decide and is_improvement"}},
}

# Survivors judged equivalent: mutant name -> (the mutated line as the diff shows it, why it cannot
# change behaviour). The line guards against a stale name: a changed source renumbers mutants.
_TARGETS = ("targets are multi-hot 0/1 (the metrics' contract); the threshold moves only a target of "
            "exactly 0.5, which no target holds")
_FALSY = "the value is only ever read as a truth value, and None is as false as False"
_DIGITIZE = ("np.digitize against the n_bins - 1 inner edges already returns 0 … n_bins - 1: the clip is a "
             "guard, and widening or dropping that bound changes no bin")
_BOOL_ZEROS = "the array only holds hits; a float array of 0.0/1.0 has the same means as a bool one"
_ASCII = ("the cache is written by json.dumps, which escapes every non-ASCII character: any ASCII-compatible "
          "encoding, the locale's included, reads it the same")
_FRESH_GRADS = ("backward right after zero_grad gives the same gradients whether the old ones were set to "
                "None or to zeros, and run_probe sets them to None at its end")
_TIMED_GRADS = ("a timed pass's gradients are only dropped: zeroed or set to None, the next pass's backward gives "
                "the same, and trial_passes sets them to None at its end (a test checks no gradient is left)")
_TIMED_COPY = "the gradients of a timed pass are copied after its clock stops, then dropped: the figures are the same"
_ISIN = ("np.isin compares values: source names as str or object, group ids as int64 or the platform's int, "
         "give the same masks")
_BANDS = ("the bands only choose which pairs are compared: this layout still guarantees that two hashes within "
          "the radius share a band value (r + 1 or more exact bands, or r // 2 + 1 or more probed one bit away, over "
          "at most the 64 bits), so every pair within the radius is still compared and the groups are the same; "
          "only the number of candidates changes")
_UINT64 = "the XOR of two uint64 arrays is uint64 already"
_COPY = "a copy instead of a view of the caller's array: the same values, and the grouping never writes to them"
_CHUNKS = ("the chunk bound only caps how many candidate pairs are held at once; every query is still "
           "compared once, in smaller or larger chunks: the same pairs")
_ORDER = "the order of equal band values does not matter: every candidate with the band value is compared"
_TABLE = ("the lookup table and the binary search give the same run of each band value; the width only picks "
          "the faster (tables up to 2**21 entries)")
_UNIQUE_FIRST = "the first positions np.unique returns are distinct: no tie for a stable sort to keep"
_FOLD_INTS = ("np.full takes the fill value's integer type, int64 here: the same -1s and fold numbers, which every "
              "reader compares or int()s")
_POOL = ("a non-empty list of row indices is an int array either way; an empty pool (float without the dtype) is "
         "never indexed: the val carve is skipped and the trained classes over it are none")
_LEAST = ("the filter only silences scikit-learn's 'The least populated class' UserWarning (a test checks that none "
          "escapes); warnings compiles the message case-insensitively and scikit-learn raises it as a UserWarning "
          "only, so these filters silence the same warning")
_EMPTY_FOLD = ("unreachable: kfold_plan first refuses fewer groups than folds, and StratifiedGroupKFold then gives "
               "every fold a group (no empty fold in 3,000 random lakes x 3 seeds); the guard stays against a change in "
               "scikit-learn")
_NEWLINE = ("the assignment's fields (hex hashes, split names) never hold a line break, where csv needs newline='': "
            "universal newlines read LF and CRLF files the same")
_ASSIGN_ASCII = ("the assignment holds hex hashes and split names, all ASCII: any ASCII-compatible encoding, the "
                 "locale's included, reads it the same; codec names are case-insensitive")
_OVERSUB = ("letting the threads take the cores the planned workers use never predicts a faster batch: the "
            "overflowing workers' load lands on the step, and dropping the extra threads or workers costs no more "
            "with fewer processes; the same plan for 20,000 random inputs (1-32 cores, DDP worlds 1-4, steps timed "
            "on 1-4 threads, steps and loads 1 ms-10 s, thread caps 1-32, worker caps 1-8), with up to every core's "
            "worth of planned workers")
EQUIVALENT: dict[str, tuple[str, str]] = {
    # split
    "x_pack_signature__mutmut_2": ("np.zeros(None, dtype=SIGNATURE)", "numpy reads a shape of None as (): the "
                                                                      "same single record"),
    "x_hold_out__mutmut_3": ("np.asarray(sources, dtype=None)", _ISIN),
    "x_hold_out__mutmut_5": ("np.asarray(sources, )", _ISIN),
    "x_hold_out__mutmut_8": ("np.asarray(groups, dtype=None)", _ISIN),
    "x_hold_out__mutmut_10": ("np.asarray(groups, )", _ISIN),
    "x_hold_out__mutmut_13": ("(len(held_out)) or True", "np.isin against an empty list is all False: the same "
                                                          "array as the zeros"),
    "x_split_targets__mutmut_12": ("round(n * fractions.get(s, 0.0), 10)", "the rounding only absorbs float "
                                   "noise in n × fraction, under 1e-10 for any lake below a million images: 9 or "
                                   "10 digits absorb it alike"),
    "x__band_masks__mutmut_1": ('probe = None', _BANDS),
    "x__band_masks__mutmut_2": ('probe = radius > 6', _BANDS),
    "x__band_masks__mutmut_3": ('probe = radius >= 7', _BANDS),
    "x__band_masks__mutmut_9": ('(probe) and False', _BANDS),
    "x__band_masks__mutmut_14": ('radius // 2 + 2', _BANDS),
    "x__band_masks__mutmut_16": ('radius + 2, 64)', _BANDS),
    "x__band_masks__mutmut_17": ('radius + 1, 65)', _BANDS),
    "x__band_masks__mutmut_19": ('64 // n_bands - (1', _BANDS),
    "x__band_masks__mutmut_22": ('(i < 64 % n_bands) and False', _BANDS),
    "x__band_masks__mutmut_31": ('out, shift = [], 1', _BANDS),
    "x__band_masks__mutmut_36": ('(1 << width) - 2', _BANDS),
    "x_near_duplicate_groups__mutmut_28": ('unique["colour"].astype(None)', "the colour means are 0-255: their "
                                           "differences are as exact in float64 as in int16"),
    "x__expand_runs__mutmut_7": ('while start <= has.size', 'one more pass with no query left yields empty arrays'),
    "x__expand_runs__mutmut_14": ('max(start + 2,', _CHUNKS),
    "x__expand_runs__mutmut_20": ('- _JOIN_CHUNK', _CHUNKS),
    "x__expand_runs__mutmut_21": ('(start) and False', _CHUNKS),
    "x__expand_runs__mutmut_22": ('(start) or True', _CHUNKS),
    "x__expand_runs__mutmut_24": ('ends[start - 2]', _CHUNKS),
    "x__expand_runs__mutmut_25": ('if start else 1)', _CHUNKS),
    "x__join__mutmut_8": ('kind=None', _ORDER),
    "x__join__mutmut_10": ('np.argsort(band, )', _ORDER),
    "x__join__mutmut_12": ('kind="STABLE"', _ORDER),
    "x__join__mutmut_21": ('table = None', _TABLE),
    "x__join__mutmut_22": ('(width <= 20) and False', _TABLE),
    "x__join__mutmut_36": ('if width < 20', _TABLE),
    "x__join__mutmut_37": ('if width <= 21', _TABLE),
    "x__join__mutmut_29": ('dtype=None)) if width', 'band values below 2**20 compare exactly as int64 or uint64'),
    "x__join__mutmut_31": ('+ 1, )) if width', 'band values below 2**20 compare exactly as int64 or uint64'),
    "x__join__mutmut_34": ('(2 << width) + 1', 'a longer table: the band values (below 2**width) read the same entries'),
    "x__join__mutmut_35": ('(1 << width) + 2', 'a longer table: the band values (below 2**width) read the same entries'),
    "x__join__mutmut_41": ('(probe) or True', 'probing one bit away as well only adds candidates; each pair is still checked against the radius'),
    "x__join__mutmut_55": ('wanted, )', "np.searchsorted's default side is 'left'"),
    "x__join__mutmut_57": ('"LEFT"', 'numpy reads the side case-insensitively'),
    "x__join__mutmut_67": ('"RIGHT"', 'numpy reads the side case-insensitively'),
    "x_near_duplicate_groups__mutmut_107": ('argsort(first, kind=None)', _UNIQUE_FIRST),
    "x_near_duplicate_groups__mutmut_109": ('argsort(first, )', _UNIQUE_FIRST),
    "x_near_duplicate_groups__mutmut_111": ('argsort(first, kind="STABLE")', _UNIQUE_FIRST),
    "x_hamming__mutmut_8": ("dtype=None)", _UINT64),
    "x_hamming__mutmut_10": ("np.bitwise_xor(a, b), )", _UINT64),
    "x_hamming__mutmut_16": ("reshape(-2, 4)", "numpy reads any negative size as the one to infer"),
    "x_signatures_array__mutmut_4": ("astype(SIGNATURE, )", _COPY),
    "x_signatures_array__mutmut_5": ("copy=True", _COPY),
    # folds
    "xǁFoldPlanǁtest_fold__mutmut_4": ("-1, dtype=None)", _FOLD_INTS),
    "xǁFoldPlanǁtest_fold__mutmut_7": ("0, -1, )", _FOLD_INTS),
    "x__carve_val__mutmut_48": ('"The least populated class", )', _LEAST),
    "x__carve_val__mutmut_52": ('"the least populated class", UserWarning)', _LEAST),
    "x__carve_val__mutmut_53": ('"THE LEAST POPULATED CLASS", UserWarning)', _LEAST),
    "x_kfold_plan__mutmut_83": ('UsageError(None, "use fewer folds")', _EMPTY_FOLD),
    "x_kfold_plan__mutmut_84": ('would score no image", None)', _EMPTY_FOLD),
    "x_kfold_plan__mutmut_85": ('raise UsageError("use fewer folds")', _EMPTY_FOLD),
    "x_kfold_plan__mutmut_86": ('would score no image", )', _EMPTY_FOLD),
    "x_kfold_plan__mutmut_87": ('"XXuse fewer foldsXX"', _EMPTY_FOLD),
    "x_kfold_plan__mutmut_88": ('"USE FEWER FOLDS"', _EMPTY_FOLD),
    "x__source_fold__mutmut_7": ("held_groups], dtype=None)", _POOL),
    "x__source_fold__mutmut_9": ("held_groups], )", _POOL),
    "x__safe__mutmut_7": ('c in "XX-_.XX"', "X is alphanumeric: isalnum() keeps it anyway"),
    "x_assigned_splits__mutmut_6": ('path.open(newline=None, encoding="utf-8")', _NEWLINE),
    "x_assigned_splits__mutmut_8": ('path.open(encoding="utf-8")', _NEWLINE),
    "x_assigned_splits__mutmut_7": ('path.open(newline="", encoding=None)', _ASSIGN_ASCII),
    "x_assigned_splits__mutmut_9": ('path.open(newline="", )', _ASSIGN_ASCII),
    "x_assigned_splits__mutmut_12": ('encoding="UTF-8"', _ASSIGN_ASCII),
    # guards
    "x_guarded_optimizer_step__mutmut_13": ('float("INF")', 'float() reads "INF" as infinity too'),
    "xǁGuardsǁon_nonfinite__mutmut_29": ("make_scaler(self.device_type, None, amp_on=False)",
                                          "with amp_on=False make_scaler never reads the precision plan"),
    "xǁGuardsǁon_nonfinite__mutmut_30": ("amp_on=None)", "a scaler built with enabled=None is a disabled one: "
                                                         "GradScaler only reads the flag as a truth value"),
    "xǁGuardsǁon_nonfinite__mutmut_43": ("g.lr_factor = 0.5", "the ladder halves once, from 1.0 (lr_halved is "
                                                              "lr_factor < 1, and the next rung is stop): ×0.5 "
                                                              "and =0.5 agree"),
    # precision
    "x_probe_precision__mutmut_27": ("cfg.train.amp, None", "on a CPU plan_precision never reads bf16_supported "
                                                            "(auto: the probe decides; on: bf16 on every CPU)"),
    "x_probe_precision__mutmut_39": ("cfg.train.amp, True", "on a CPU plan_precision never reads bf16_supported "
                                                            "(auto: the probe decides; on: bf16 on every CPU)"),
    "x_cached_probe__mutmut_8": ("encoding=None", _ASCII),
    "x_cached_probe__mutmut_11": ('encoding="UTF-8"', _ASCII),
    "x_store_probe__mutmut_8": ("encoding=None", _ASCII),
    "x_store_probe__mutmut_10": ('encoding="UTF-8"', _ASCII),
    "x_time_step__mutmut_28": ("model.zero_grad(set_to_none=None)", _TIMED_GRADS),
    "x_time_step__mutmut_29": ("model.zero_grad(set_to_none=False)", _TIMED_GRADS),
    "x__pass__mutmut_3": ("set_to_none=None", _FRESH_GRADS),
    "x__pass__mutmut_4": ("set_to_none=False", _FRESH_GRADS),
    "x__pass__mutmut_22": ("(keep) or True", _TIMED_COPY),
    "x_run_probe__mutmut_48": ("keep=None", _TIMED_COPY),
    "x_run_probe__mutmut_55": ("rng, )[2]", _TIMED_COPY),
    "x_run_probe__mutmut_56": ("keep=True", _TIMED_COPY),
    "x_run_probe__mutmut_1": ("timed_rounds: int = 3", "one more timed round per precision only lengthens the "
                                                        "probe; the fastest round counts either way"),
    "x_run_probe__mutmut_4": ("fork_rng(devices=None)", "None forks every device's RNG, [] only the CPU's: the "
                                                        "probe draws from the CPU's, which is restored either way"),
    # interrupts
    "x_resume_command__mutmut_6": ('"XXXX"', "with no argv the program is not sustain either way: the same "
                                             "Python-API line"),
    "x_resume_command__mutmut_26": ("skip = None", _FALSY),
    "x_resume_command__mutmut_28": ("skip = None", _FALSY),
    "xǁStopRequestsǁ__init____mutmut_3": ("self.saving = None", _FALSY),
    # metrics
    "x_split_fine_and_set__mutmut_3": (">= 0.5", _TARGETS),
    "x_epoch_metrics__mutmut_5": (">= 0.5", _TARGETS),
    "x_per_source_accuracy__mutmut_5": (">= 0.5", _TARGETS),
    "x_bin_accuracy__mutmut_13": (">= 0.5", _TARGETS),
    "x_topk_accuracy__mutmut_6": (">= 0.5", _TARGETS),
    "x_expected_calibration_error__mutmut_5": (">= 0.5", _TARGETS),
    "x_per_source_accuracy__mutmut_17": ("dtype=None", _BOOL_ZEROS),
    "x_per_source_accuracy__mutmut_19": ("np.zeros(len(p), )", _BOOL_ZEROS),
    "x_per_source_accuracy__mutmut_26": ("dtype=None", _BOOL_ZEROS),
    "x_per_source_accuracy__mutmut_28": ("np.zeros(len(p), )", _BOOL_ZEROS),
    "x_expected_calibration_error__mutmut_32": ("right=True), None, n_bins - 1)", _DIGITIZE),
    "x_expected_calibration_error__mutmut_33": ("right=True), 0, None)", _DIGITIZE),
    "x_expected_calibration_error__mutmut_48": ("right=True), 0, n_bins + 1)", _DIGITIZE),
    "x_epoch_metrics__mutmut_45": ("zero_division=1", "macro F1 averages over the classes in y_true or y_pred, "
                                                     "where F1's 0/0 case (no true and no predicted sample) never "
                                                     "arises; neither setting warns"),
    "x_final_metrics__mutmut_35": ("targets, )", "topk_accuracy's default k is 5"),
    "x_top_confusions__mutmut_17": ('kind="STABLE"', "numpy reads the sort kind case-insensitively"),
    "x_topk_accuracy__mutmut_23": ("k - 1, )", "np.argpartition's default axis is the last, which for the "
                                               "[N, C] probabilities is axis 1"),
    # device
    "x_plan_channels_last__mutmut_1": ('"XXDEFAULTXX"', "the default only has to be an ISA without measured "
                                                          "NHWC kernels: any string outside AVX2/AVX512 is"),
    "x_plan_channels_last__mutmut_2": ('"default"', "the default only has to be an ISA without measured NHWC "
                                                    "kernels: any string outside AVX2/AVX512 is"),
    "x_plan_cpu__mutmut_32": ("oversubscribe=None)", _FALSY),
    "x_plan_cpu__mutmut_41": ("range(min(max_workers, share) + 1)", "range(n) is range(0, n)"),
    "x_plan_cpu__mutmut_50": ("oversubscribe=True)", _OVERSUB),
    "x__best_cpu_plan__mutmut_4": ("(oversubscribe) or True", _OVERSUB),
    "x__best_cpu_plan__mutmut_47": ("key <= best[0]", "a key holds w + t and t: two plans never share one, so < "
                                                      "and <= pick the same"),
    "x__best_cpu_plan__mutmut_80": ("min(2.0, load / w / max(seconds, 1e-9))",
                                    "the busy share never exceeds 1: a plan's seconds are at least load / w"),
}

KILLED = {1, 3}  # mutmut's exit codes: a test failed (3: pytest's internal error)
TIMEOUT = {24, -24, 152, 255, 36}


def module_name(file: str) -> str:
    return file[:-3].replace("/", ".")


def mangled(function: str) -> str:
    """mutmut's name of a function's mutants: x_name, or xǁClassǁmethod."""
    cls, _, meth = function.rpartition(".")
    return f"xǁ{cls}ǁ{meth}" if cls else f"x_{function}"


def patterns(spec: dict[str, Any]) -> list[str]:
    prefix = module_name(spec["file"])
    if spec["functions"] is None:
        return [f"{prefix}.*"]
    return [f"{prefix}.{mangled(f)}__mutmut_*" for f in spec["functions"]]


def run_mutmut(spec: dict[str, Any], max_children: int) -> int:
    """mutmut over the module's functions in scope; its sustain must be the mutated copy, so no PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cmd = [sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children), *patterns(spec)]
    print(f"$ {' '.join(cmd)}", flush=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL).returncode


def in_scope(key: str, spec: dict[str, Any]) -> bool:
    if spec["functions"] is None:
        return True
    local = key.rpartition(".")[2].rsplit("__mutmut_", 1)[0]
    return local in {mangled(f) for f in spec["functions"]}


def def_lines(file: str) -> dict[str, int]:
    """The `def` line of every function and method, by mutmut's mangled name."""
    tree = ast.parse((ROOT / file).read_text(encoding="utf-8"))
    lines = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            lines[mangled(node.name)] = node.lineno
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    lines[mangled(f"{node.name}.{item.name}")] = item.lineno
    return lines


def describe(key: str, file: str, lines: dict[str, int]) -> dict[str, Any]:
    """A mutant as the report shows it: file:line, the line before and after."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    diff = get_diff_for_mutant(key, path=Path(file)).splitlines()
    start = next((int(m[1]) for line in diff if (m := re.match(r"@@ -(\d+)", line))), 1)
    body = [line for line in diff if not line.startswith(("---", "+++", "@@"))]
    offset = next((i for i, line in enumerate(body) if line.startswith("-")), 0)
    removed = [line[1:].strip() for line in body if line.startswith("-")]
    added = [line[1:].strip() for line in body if line.startswith("+")]
    line_no = lines.get(key.rpartition(".")[2].rsplit("__mutmut_", 1)[0], 0) + start - 1 + offset
    return {"name": key.rpartition(".")[2], "mutant": f"{file}:{line_no}: {' / '.join(removed) or '(nothing)'}"
            f"  →  {' / '.join(added) or '(removed)'}"}


def module_result(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    from mutmut.stats import status_by_exit_code

    meta = ROOT / "mutants" / f"{spec['file']}.meta"
    codes = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"] if meta.is_file() else {}
    codes = {k: v for k, v in codes.items() if in_scope(k, spec)}
    lines = def_lines(spec["file"])
    killed = sum(1 for v in codes.values() if v in KILLED)
    timeouts = sum(1 for v in codes.values() if v in TIMEOUT)
    not_run = sorted(k for k, v in codes.items() if v is None)
    equivalent, left = [], []
    for key in sorted(k for k, v in codes.items() if v is not None and v not in KILLED | TIMEOUT):
        item = describe(key, spec["file"], lines)
        item["status"] = status_by_exit_code[codes[key]]  # survived, no tests, interrupted, ...
        judged = EQUIVALENT.get(item["name"])
        if judged and judged[0] in item["mutant"]:
            equivalent.append({**item, "reason": judged[1]})
        else:
            left.append(item)
    counted = len(codes) - len(not_run) - len(equivalent)
    ratio = (killed + timeouts) / counted if counted else None
    return {"module": spec["file"], "scope": spec["functions"] or "every function",
            "out_of_scope": spec.get("out_of_scope", {}), "mutants": len(codes), "killed": killed + timeouts,
            "timeouts": timeouts, "survived": len(equivalent) + len(left), "n_equivalent": len(equivalent),
            "n_left": len(left), "not_run": len(not_run),
            "killed_ratio": round(ratio, 4) if ratio is not None else None,
            "goal_met": ratio is not None and ratio >= GOAL and not not_run,
            "equivalent": equivalent, "survivors_left": left}


def kept_results(path: Path, fresh: list[str]) -> dict[str, dict[str, Any]]:
    """The entries of the modules not measured now, from the result at `path`, each saying which run
    measured it (`measured_by`: command, commit, date): a run of some modules keeps the others' verdicts."""
    if not path.is_file():
        return {}
    old = json.loads(path.read_text(encoding="utf-8"))
    by = {k: old.get("provenance", {}).get(k) for k in ("command", "commit", "date_utc")}
    files = {MODULES[name]["file"] for name in fresh}
    return {m["module"]: {**m, "measured_by": m.get("measured_by", by)}
            for m in old.get("modules", []) if m["module"] not in files}


def main(argv: list[str] | None = None) -> int:
    parser = arg_parser(__doc__)
    parser.add_argument("--modules", nargs="+", choices=sorted(MODULES), default=list(MODULES),
                        help="the modules to mutate and report (default: all); the others keep their entries "
                             "in the existing JSON")
    parser.add_argument("--max-children", type=int, default=2, help="mutants tested at once (default 2)")
    parser.add_argument("--report-only", action="store_true",
                        help="do not run mutmut; report the verdicts already in mutants/")
    parser.add_argument("--json", type=Path, default=results_file("mutation"), help="where the result goes")
    parser.add_argument("--note", default="", help="with --report-only: how the verdicts in mutants/ were made")
    args = parser.parse_args(argv)
    if not args.report_only:
        for name in args.modules:
            if run_mutmut(MODULES[name], args.max_children) != 0:
                print(f"mutmut failed on {name}", file=sys.stderr)
                return 1
    os.chdir(ROOT)  # mutmut's readers take paths relative to the project
    kept = kept_results(args.json, args.modules)
    modules = [kept.get(spec["file"]) or module_result(name, spec) for name, spec in MODULES.items()]
    for m in modules:
        print(f"{m['module']}: {m['killed']}/{m['mutants']} killed, {len(m['equivalent'])} equivalent, "
              f"{len(m['survivors_left'])} left, {m['not_run']} not run: {m['killed_ratio']}")
    write_result(args.json, {"tool": "mutmut 3 (pyproject.toml [tool.mutmut])", "goal": GOAL,
                             "score": "killed / (mutants - equivalent - not run); a timeout counts as killed, "
                                      "a mutant no selected test reaches as survived",
                             "note": args.note, "modules": modules})
    return 0


if __name__ == "__main__":
    sys.exit(main())
