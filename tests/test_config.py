"""The config schema: loading, validation errors through the real CLI, --set overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sustain.config import Config, load_config
from sustain.errors import ConfigError, UsageError
from sustain.taxonomy import build_taxonomy

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# The commands that take --config; a config error must stop each of them the same way.
CONFIG_COMMANDS = [("train",), ("data", "ingest")]


def minimal() -> dict:
    return {"data": {"sources": [{"name": "lake", "root": "lake", "label_map": "identity"}]}}


def with_section(section: str, **values) -> dict:
    raw = minimal()
    raw.setdefault(section, {}).update(values)
    return raw


def assert_usage_error(result, *fragments: str) -> None:
    """Exit code 2, every fragment named in the message, and no traceback."""
    assert result.code == 2, result.output
    for fragment in fragments:
        assert fragment in result.output, f"{fragment!r} not in:\n{result.output}"
    assert "Traceback" not in result.output


# --------------------------------------------------------------------------- errors through the CLI


@pytest.mark.parametrize("command", CONFIG_COMMANDS, ids=" ".join)
@pytest.mark.parametrize(
    ("raw", "key", "hint"),
    [
        ({**minimal(), "trian": {"epochs": 3}}, "'trian'", "did you mean 'train'"),
        (with_section("train", epoch=3), "'train.epoch'", "did you mean 'train.epochs'"),
        (
            {"data": {"sources": [{"name": "s", "root": "r", "label_map": "identity", "enabeld": False}]}},
            "'data.sources.0.enabeld'",
            "did you mean 'data.sources.0.enabled'",
        ),
    ],
    ids=["top-level", "nested", "inside-a-list"],
)
def test_unknown_key_exits_2_with_did_you_mean(run_cli, write_config, command, raw, key, hint):
    result = run_cli(*command, "--config", write_config(raw))
    assert_usage_error(result, key, "unknown key", hint)


def test_unknown_key_without_close_match_lists_valid_keys(run_cli, write_config):
    result = run_cli("train", "--config", write_config(with_section("guards", zzzz=1)))
    assert_usage_error(result, "'guards.zzzz'", "warn_pct", "critical_pct")


@pytest.mark.parametrize("command", CONFIG_COMMANDS, ids=" ".join)
@pytest.mark.parametrize(
    ("raw", "key", "shown"),
    [
        (with_section("train", batch_size="big"), "'train.batch_size'", "'big'"),
        (with_section("train", ema="sometimes"), "'train.ema'", "'sometimes'"),
        ({**minimal(), "device": "gpu"}, "'device'", "'gpu'"),
        ({"data": {"sources": "lake"}}, "'data.sources'", "list"),
    ],
    ids=["int", "bool", "choice", "list"],
)
def test_wrong_type_exits_2_naming_key_and_value(run_cli, write_config, command, raw, key, shown):
    result = run_cli(*command, "--config", write_config(raw))
    assert_usage_error(result, key, shown)


@pytest.mark.parametrize("command", CONFIG_COMMANDS, ids=" ".join)
@pytest.mark.parametrize(
    ("raw", "key"),
    [
        (with_section("train", lr=-1e-3), "'train.lr'"),
        (with_section("train", epochs=0), "'train.epochs'"),
        (with_section("guards", warn_pct=150), "'guards.warn_pct'"),
        (with_section("model", drop_path_rate=1.5), "'model.drop_path_rate'"),
        ({"data": {**minimal()["data"], "split": {"train": 0.9, "val": 0.1, "test": 0.1}}}, "'data.split'"),
        ({"data": {**minimal()["data"], "num_workers": -1}}, "'data.num_workers'"),
    ],
    ids=["lr", "epochs", "pct", "drop_path", "split-sum", "workers"],
)
def test_out_of_range_exits_2_naming_key(run_cli, write_config, command, raw, key):
    assert_usage_error(run_cli(*command, "--config", write_config(raw)), key)


def test_split_error_says_what_must_hold(run_cli, write_config):
    raw = {"data": {**minimal()["data"], "split": {"train": 0.9, "val": 0.1, "test": 0.1}}}
    assert_usage_error(run_cli("train", "--config", write_config(raw)), "sum to 1.0", "1.1")


def test_missing_required_section_exits_2(run_cli, write_config):
    result = run_cli("train", "--config", write_config({"seed": 1}))
    assert_usage_error(result, "'data'", "missing")


def test_duplicate_source_names_exit_2(run_cli, write_config):
    source = minimal()["data"]["sources"][0]
    result = run_cli("train", "--config", write_config({"data": {"sources": [source, source]}}))
    assert_usage_error(result, "'data.sources'", "lake")


@pytest.mark.parametrize("command", CONFIG_COMMANDS, ids=" ".join)
def test_missing_config_file_exits_2_naming_it(run_cli, tmp_path, command):
    missing = tmp_path / "nowhere" / "run.yaml"
    assert_usage_error(run_cli(*command, "--config", missing), str(missing), "not found")


@pytest.mark.parametrize("command", CONFIG_COMMANDS, ids=" ".join)
def test_malformed_yaml_exits_2_naming_file_and_line(run_cli, write_config, command):
    path = write_config("seed: 1\ndata:\n  sources: [\n  bad: : x\n", name="broken.yaml")
    assert_usage_error(run_cli(*command, "--config", path), "Malformed YAML", "broken.yaml", "line 4")


def test_yaml_that_is_not_a_mapping_exits_2(run_cli, write_config):
    path = write_config("- train\n- epochs\n", name="list.yaml")
    assert_usage_error(run_cli("train", "--config", path), "list.yaml", "mapping")


def test_empty_config_file_reports_the_missing_data_section(run_cli, write_config):
    assert_usage_error(run_cli("train", "--config", write_config("")), "'data'", "missing")


# --------------------------------------------------------------------------- --set overrides


def test_set_overrides_nested_keys_with_yaml_types(write_config):
    cfg = load_config(write_config(minimal()), [
        "train.epochs=3",
        "train.lr=2.5e-4",
        "train.grad_clip=null",
        "model.pretrained=false",
        "model.mean=[0.5, 0.5, 0.5]",
        "guards.inject_nonfinite_loss=[3, 7]",
        "data.split={train: 0.6, val: 0.2, test: 0.2}",
        "output_dir=runs/a=b",
    ])
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)
    assert cfg.train.lr == pytest.approx(2.5e-4)
    assert cfg.train.grad_clip is None
    assert cfg.model.pretrained is False
    assert cfg.model.mean == (0.5, 0.5, 0.5)
    assert cfg.guards.inject_nonfinite_loss == [3, 7]
    assert (cfg.data.split.train, cfg.data.split.val, cfg.data.split.test) == (0.6, 0.2, 0.2)
    assert cfg.output_dir == "runs/a=b"  # only the first '=' separates key and value


def test_set_indexes_into_lists(write_config):
    raw = yaml.safe_load((CONFIGS / "demo.yaml").read_text(encoding="utf-8"))
    cfg = load_config(write_config(raw), [
        "data.sources.0.enabled=false",
        "data.sources.1.label_map.trash=PLASTIC",
        "data.sources.1.root=elsewhere",
    ])
    master, coarse = cfg.data.sources
    assert master.enabled is False and coarse.enabled is True
    assert coarse.label_map["trash"] == "PLASTIC"
    assert coarse.label_map["plastic"] == "PLASTIC"  # the rest of the mapping is untouched
    assert coarse.root == "elsewhere"


def test_later_set_wins_and_file_is_untouched(write_config):
    path = write_config(with_section("train", epochs=9))
    before = path.read_text(encoding="utf-8")
    cfg = load_config(path, ["train.epochs=3", "train.epochs=4"])
    assert cfg.train.epochs == 4
    assert load_config(path).train.epochs == 9
    assert path.read_text(encoding="utf-8") == before


def test_set_can_fill_a_missing_required_value(write_config):
    cfg = load_config(write_config({"seed": 7}), ["data.sources=[{name: s, root: r, label_map: identity}]"])
    assert cfg.seed == 7 and cfg.data.sources[0].name == "s"


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("train.epoch=3", ["'train.epoch'", "did you mean 'train.epochs'"]),
        ("train.epochs=zero", ["'train.epochs'", "'zero'"]),
        ("train.epochs=0", ["'train.epochs'"]),
        ("data.sources.5.enabled=false", ["'data.sources.5'", "the list has 1"]),
        ("seed.value=1", ["'seed'", "not a section"]),
        ("train.epochs", ["train.epochs", "key=value"]),
        ("=3", ["'=3'", "key=value"]),
    ],
    ids=["unknown", "type", "range", "index", "into-a-value", "no-equals", "no-key"],
)
def test_bad_set_exits_2_naming_key(run_cli, write_config, override, fragments):
    result = run_cli("train", "--config", write_config({**minimal(), "seed": 3}), "--set", override)
    assert_usage_error(result, *fragments)


def test_output_flag_overrides_output_dir_and_is_validated(run_cli, write_config):
    # --output goes through the same override path: a bad config still fails first, naming its key.
    result = run_cli("train", "--config", write_config(with_section("train", epochs=0)), "--output", "x")
    assert_usage_error(result, "'train.epochs'")


# --------------------------------------------------------------------------- shipped configs


SPEC_SOURCES = ["master_30", "garbage_12", "waste_22k", "garbage_v2_10", "garbage_6",
                "garbage_balanced", "warp_industrial", "multiclass_garbage"]


@pytest.mark.parametrize("name", ["demo.yaml", "eva02_master30.yaml"])
def test_shipped_configs_validate_and_every_label_resolves(name):
    cfg = load_config(CONFIGS / name)
    taxonomy = build_taxonomy(**cfg.taxonomy.model_dump())
    assert taxonomy.num_classes == 30
    for source in cfg.data.sources:
        if source.label_map == "identity":
            continue
        for folder, target in source.label_map.items():
            if target is not None:  # null drops the file
                assert taxonomy.resolve(target), f"{name}: {source.name}.{folder} -> {target}"


def test_eva02_config_has_the_eight_kaggle_sources_of_the_spec():
    cfg = load_config(CONFIGS / "eva02_master30.yaml")
    assert [s.name for s in cfg.data.sources] == SPEC_SOURCES
    assert all(s.kaggle and "/" in s.kaggle for s in cfg.data.sources)
    assert cfg.model.name == "eva02_base_patch14_224"
    by_name = {s.name: s for s in cfg.data.sources}
    assert by_name["master_30"].label_map == "identity"
    assert by_name["garbage_12"].label_map["brown-glass"] == "GLASS"
    assert by_name["garbage_12"].label_map["battery"] is None
    assert set(by_name["waste_22k"].label_map["R"]) == {"PLASTIC", "METAL", "GLASS", "PAPER", "CARDBOARD"}
    assert by_name["warp_industrial"].label_map["cans"] == ["aluminum_soda_cans", "aluminum_food_cans",
                                                            "steel_food_cans"]


def test_demo_config_runs_offline_on_a_tiny_model():
    cfg = load_config(CONFIGS / "demo.yaml")
    assert cfg.model.pretrained is False  # no download in `make train`
    assert [s.name for s in cfg.data.sources] == ["demo_master", "demo_coarse"]


def test_config_round_trips_through_to_dict():
    cfg = load_config(CONFIGS / "eva02_master30.yaml")
    assert Config.model_validate(cfg.to_dict()) == cfg


# --------------------------------------------------------------------------- source_root


def test_source_root_resolves_relative_roots_against_data_root(tmp_path, monkeypatch, write_config):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    raw = {"data": {"root": str(tmp_path / "lake"), "sources": [
        {"name": "rel", "root": "kaggle/a/images", "label_map": "identity"},
        {"name": "abs", "root": str(tmp_path / "elsewhere"), "label_map": "identity"},
        {"name": "home", "root": "~/datasets/c", "label_map": "identity"},
    ]}}
    cfg = load_config(write_config(raw))
    rel, absolute, home = cfg.data.sources
    assert cfg.source_root(rel) == tmp_path / "lake" / "kaggle" / "a" / "images"
    assert cfg.source_root(absolute) == tmp_path / "elsewhere"
    assert cfg.source_root(home) == tmp_path / "home" / "datasets" / "c"


def test_source_root_with_relative_data_root_stays_relative_to_cwd():
    cfg = load_config(CONFIGS / "demo.yaml")
    assert cfg.source_root(cfg.data.sources[0]) == Path("data/demo/master/images/images")


def test_library_errors_carry_the_key():
    with pytest.raises(ConfigError) as info:
        load_config(CONFIGS / "demo.yaml", ["train.batch_size=0"])
    assert info.value.key == "train.batch_size"
    assert info.value.exit_code == 2
    with pytest.raises(UsageError):
        load_config(CONFIGS / "no_such.yaml")


def test_every_config_error_is_reported_at_once(run_cli, write_config):
    raw = {"seed": "abc", "trian": {"epochs": 3}, "model": {"name": "test_vit", "pretrianed": False}}
    result = run_cli("train", "--config", write_config(raw))

    assert result.code == 2 and "Traceback" not in result.output
    text = result.output
    assert "4 config errors" in text
    for needle in ["'data': required key is missing", "'trian': unknown key", "did you mean 'train'?",
                   "'model.pretrianed': unknown key", "did you mean 'model.pretrained'?", "'seed'", "'abc'"]:
        assert needle in text, needle


# --------------------------------------------------------------------------- on/off values, YAML booleans

MINIMAL_YAML = "data:\n  sources:\n    - {name: lake, root: lake, label_map: identity}\n"


@pytest.mark.parametrize(("key", "written", "expected"), [
    ("train.amp", "off", "off"), ("train.amp", "on", "on"), ("train.amp", "auto", "auto"),
    ("train.amp", "'off'", "off"), ("train.amp", '"on"', "on"), ("train.amp", "false", "off"),
    ("train.amp", "yes", "on"), ("train.amp", "Off", "off"),
    ("data.image_cache", "off", "off"), ("data.image_cache", "'off'", "off"), ("data.image_cache", "on", "auto"),
    ("data.image_cache", "false", "off"), ("data.image_cache", "auto", "auto"), ("data.image_cache", "96", 96),
])
def test_on_off_fields_accept_yaml_booleans_in_the_file_and_through_set(write_config, key, written, expected):
    # YAML 1.1 reads unquoted on/off as True/False: README's `train.amp: off` must still mean off.
    section, field = key.split(".")
    text = MINIMAL_YAML if section == "data" else MINIMAL_YAML + f"{section}:\n"
    text += f"  {field}: {written}\n"
    cfg = load_config(write_config(text))
    assert getattr(getattr(cfg, section), field) == expected
    from_set = load_config(write_config(MINIMAL_YAML, "plain.yaml"), [f"{key}={written}"])
    assert getattr(getattr(from_set, section), field) == expected


def test_stop_message_advice_train_amp_off_works_through_the_cli(run_cli, write_config):
    # Unquoted, as README and the guards' stop message write it: the run gets past the config.
    result = run_cli("train", "--config", write_config(MINIMAL_YAML), "--set", "train.amp=off", "--set", "train.amp=bad")
    assert_usage_error(result, "'train.amp'", "'bad'")  # only the bad value is refused
    assert "got False" not in result.output


def test_rejected_value_with_credentials_is_masked(run_cli, write_config):
    result = run_cli("train", "--config", write_config(MINIMAL_YAML),
                     "--set", "tracking.mlflow.tracking_uri=http://user:s3cret@127.0.0.1:5999")
    assert_usage_error(result, "'tracking.mlflow.tracking_uri'", "http://***@127.0.0.1:5999", "MLFLOW_TRACKING_PASSWORD")
    assert "s3cret" not in result.output and "user:" not in result.output
