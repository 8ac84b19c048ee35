"""Config schema: misspelled keys suggest the right one, wrong types say what was expected, and every
shipped config (package data, src/pspnet/configs/) validates with the paper's recipe."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pspnet import cli
from pspnet.config import CONFIGS_DIR, Config, apply_overrides, dump_config, load_config
from pspnet.data.datasets import DATASETS, dataset_info
from pspnet.errors import ConfigError, WeightsError
from pspnet.models.pspnet import CONFIG_FIELDS, PSPNetConfig
from pspnet.models.weights import check_config_dict

SHIPPED = sorted(CONFIGS_DIR.rglob("*.yaml"))


def write(tmp_path: Path, raw) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw) if not isinstance(raw, str) else raw, encoding="utf-8")
    return path


@pytest.mark.parametrize("section, key, expected", [
    ("train", "lrr", "train.lr"),
    ("train", "batchsize", "train.batch_size"),
    ("model", "depht", "model.depth"),
    ("data", "crop_szie", "data.crop_size"),
    ("train", "crop_size", "data.crop_size"),  # right key, wrong section
])
def test_misspelled_key_in_file_suggests_closest(tmp_path, section, key, expected) -> None:
    path = write(tmp_path, {section: {key: 1}})
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert f"unknown key '{section}.{key}'" in msg
    assert f"did you mean '{expected}'" in msg
    assert str(path) in msg  # names the file


def test_misspelled_section_suggests_section(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'trian'; did you mean section 'train'"):
        load_config(write(tmp_path, {"trian": {"lr": 0.1}}))


@pytest.mark.parametrize("override, expected", [
    ("train.lrr=0.1", "did you mean 'train.lr'"),
    ("train.warmup=10", "did you mean 'train.warmup_iters'"),
    ("trian.lr=0.1", "did you mean 'train.lr'"),
    ("lr=0.1", "did you mean 'train.lr'"),
])
def test_unknown_override_suggests_closest(override, expected) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert expected in str(e.value)


def test_override_without_value_is_explained() -> None:
    with pytest.raises(ConfigError, match=r"must look like section.key=value"):
        load_config(None, ["train.lr"])


@pytest.mark.parametrize("raw, expected", [
    ({"train": {"lr": "fast"}}, r"'train.lr': Input should be a valid number.*got 'fast'"),
    ({"train": {"batch_size": 2.5}}, r"'train.batch_size': Input should be a valid integer"),
    ({"train": {"batch_size": 0}}, r"'train.batch_size': Input should be greater than or equal to 1"),
    ({"model": {"depth": 19}}, r"'model.depth': Input should be 18, 34, 50, 101 or 152"),
    ({"train": {"precision": "half"}}, r"'train.precision': Input should be 'fp32', 'bf16', 'fp16' or 'auto'"),
    ({"data": {"crop_size": [4, 4]}}, r"crop_size must be at least 8 x 8"),
    ({"data": {"scale_min": 3.0}}, r"data.scale_min \(3.0\) must not exceed data.scale_max \(2.0\)"),
    ({"train": 5}, r"'train': Input should be a valid dictionary"),
])
def test_wrong_types_and_values_are_clear(tmp_path, raw, expected) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_config(write(tmp_path, raw))


def test_every_error_is_listed_at_once(tmp_path) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, {"train": {"lr": "x", "lrr": 1}, "model": {"depth": 7}}))
    msg = str(e.value)
    assert "'train.lr'" in msg and "unknown key 'train.lrr'" in msg and "'model.depth'" in msg


def test_not_yaml_and_not_a_mapping(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "train: [unclosed"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_overrides_are_typed_and_validated() -> None:
    cfg = load_config(None, ["train.lr=0.005", "data.crop_size=[473,473]", "model.bins=[1,2]",
                             "train.class_weights=[1, 2.5]", "train.pretrained=null"])
    assert cfg.train.lr == 0.005 and cfg.data.crop_size == (473, 473) and cfg.model.bins == [1, 2]
    assert cfg.train.class_weights == [1.0, 2.5] and cfg.train.pretrained is None
    assert load_config(None, ["data.crop_size=713"]).data.crop_size == (713, 713)  # one number: square
    assert load_config(None, ["train.lr=1e-3"]).train.lr == 1e-3  # YAML 1.1 reads 1e-3 as text
    with pytest.raises(ConfigError, match=r"'train.iters': Input should be a valid integer"):
        load_config(None, ["train.iters=many"])


def test_overrides_do_not_mutate_the_input() -> None:
    raw = {"train": {"lr": 0.1}}
    out = apply_overrides(raw, ["train.lr=0.2", "eval.flip=true"])
    assert raw == {"train": {"lr": 0.1}} and out["train"]["lr"] == 0.2 and out["eval"]["flip"] is True


def test_empty_section_and_round_trip(tmp_path) -> None:
    cfg = load_config(write(tmp_path, "eval:\ntrain:\n  lr: 0.02\n"))
    assert cfg.train.lr == 0.02 and cfg.eval == Config().eval
    again = load_config(write(tmp_path, dump_config(cfg)))
    assert again == cfg


def test_cli_reports_config_errors_with_exit_code_2(tmp_path, capsys) -> None:
    path = write(tmp_path, {"train": {"lrr": 0.1}})
    assert cli.main(["train", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'train.lrr'" in err and "did you mean 'train.lr'" in err
    ok = write(tmp_path, {"train": {"lr": 0.1}})
    assert cli.main(["train", "-c", str(ok), "train.bach_size=4"]) == 2
    assert "did you mean 'train.batch_size'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ shipped configs
def test_configs_exist_for_every_dataset_and_backbone() -> None:
    names = {p.relative_to(CONFIGS_DIR).as_posix() for p in SHIPPED}
    for ds in ("cityscapes", "ade20k", "voc", "camvid", "kitti_road"):
        for depth in (18, 50, 101):
            assert f"{ds}/pspnet_r{depth}.yaml" in names
    assert "kitti_road/pspnet_r18_from_camvid.yaml" in names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.relative_to(CONFIGS_DIR).as_posix())
def test_shipped_config_validates(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.data.dataset in DATASETS, f"{path}: dataset {cfg.data.dataset!r} is not a named dataset"
    info = dataset_info(cfg.data.dataset)
    assert cfg.model.num_classes in (None, info.num_classes)
    if cfg.train.class_weights is not None:
        assert len(cfg.train.class_weights) == info.num_classes
    assert cfg.train.iters or cfg.train.epochs, f"{path}: no training length"
    assert path.parent.name in cfg.data.dataset  # voc/ holds voc_aug, camvid/ camvid
    # the paper's optimiser and loss (Sec. 4.1) unless a file says otherwise in a comment
    assert (cfg.train.momentum, cfg.train.power, cfg.train.aux_weight, cfg.data.ignore_index) == (0.9, 0.9, 0.4, 255)


@pytest.mark.parametrize("dataset, crop, epochs", [
    ("cityscapes", (713, 713), 200), ("ade20k", (473, 473), 100), ("voc", (473, 473), 50),
])
@pytest.mark.parametrize("depth", [50, 101])
def test_paper_datasets_use_the_original_release_recipe(dataset, crop, epochs, depth) -> None:
    cfg = load_config(CONFIGS_DIR / dataset / f"pspnet_r{depth}.yaml")
    assert cfg.data.crop_size == crop and cfg.eval.crop_size == crop and cfg.eval.mode == "sliding"
    assert cfg.train.epochs == epochs and cfg.train.batch_size * 8 == 16  # 8 GPUs x 2 = 16
    assert (cfg.train.lr, cfg.train.head_lr_mult, cfg.train.weight_decay) == (0.01, 10, 1e-4)
    assert (cfg.data.scale_min, cfg.data.scale_max, cfg.data.rotate) == (0.5, 2.0, 10)
    assert cfg.model.depth == depth and cfg.model.bins == [1, 2, 3, 6] and cfg.model.norm == "syncbn"
    assert cfg.model.deep_stem and cfg.model.dropout == 0.1 and cfg.model.output_stride == 8


def test_transfer_recipe_matches_the_camvid_cpu_model() -> None:
    kitti = load_config(CONFIGS_DIR / "kitti_road" / "pspnet_r18_from_camvid.yaml")
    camvid = load_config(CONFIGS_DIR / "camvid" / "pspnet_r18_cpu.yaml")
    assert kitti.data.dataset == "kitti_road" and dataset_info("kitti_road").num_classes == 2
    assert kitti.train.pretrained == "packaged"  # the packaged CamVid model, wherever pspnet is installed
    same = ("depth", "output_stride", "deep_stem", "bins", "pool", "norm", "aux", "head_channels", "aux_channels")
    for key in same:  # every tensor but the classifiers must fit
        assert getattr(kitti.model, key) == getattr(camvid.model, key), key
    assert kitti.train.freeze_bn
    # the crops at the scales the CamVid model learnt, tested at full resolution as it is
    assert (kitti.data.scale_min, kitti.data.scale_max) == (camvid.data.scale_min, camvid.data.scale_max)


def _changes_from_the_cpu_recipe(name: str) -> tuple[dict, dict, set[tuple[str, str]]]:
    """A derived CamVid recipe and camvid/pspnet_r18_cpu, resolved, and the (section, key) pairs where they differ."""
    assert yaml.safe_load((CONFIGS_DIR / "camvid" / f"{name}.yaml").read_text())["base"] == \
        "camvid/pspnet_r18_cpu"  # it names its changes only, so it cannot drift from the CPU recipe
    derived = load_config(CONFIGS_DIR / "camvid" / f"{name}.yaml").model_dump()
    short = load_config(CONFIGS_DIR / "camvid" / "pspnet_r18_cpu.yaml").model_dump()
    return derived, short, {(section, key) for section in short for key in short[section]
                            if derived[section][key] != short[section][key]}


def test_long_camvid_recipe_differs_from_the_cpu_recipe_only_where_its_search_said() -> None:
    long, short, changed = _changes_from_the_cpu_recipe("pspnet_r18_cpu_long")
    assert changed == {("train", "iters"), ("train", "loss"), ("train", "output_dir")}
    assert long["train"]["iters"] == 4 * short["train"]["iters"] and long["train"]["loss"] == "ohem"
    # the staged commands in its header stop at iterations inside the schedule, in order
    header = (CONFIGS_DIR / "camvid" / "pspnet_r18_cpu_long.yaml").read_text().split("model:")[0]
    stops = [int(n) for n in re.findall(r"--max-iters (\d+)", header)]
    assert stops == sorted(stops) and 0 < stops[0] and stops[-1] < long["train"]["iters"]


def test_large_crops_recipe_is_the_long_recipe_with_round_5_crops_only() -> None:
    """camvid/pspnet_r18_cpu_large_crops is round 5's runs: the long recipe, 288x384 crops x 4, tested with flip."""
    large, short, changed = _changes_from_the_cpu_recipe("pspnet_r18_cpu_large_crops")
    long, _, changed_long = _changes_from_the_cpu_recipe("pspnet_r18_cpu_long")
    assert changed == changed_long | {("data", "crop_size"), ("train", "batch_size"), ("eval", "flip")}
    assert (large["train"]["iters"], large["train"]["loss"]) == (long["train"]["iters"], long["train"]["loss"])
    assert tuple(large["data"]["crop_size"]) == (288, 384) and large["train"]["batch_size"] == 4
    assert large["eval"]["flip"] and not long["eval"]["flip"]  # recorded in its weights, chosen on both halves
    # about as many pixels a step as the 8 x 192x256 it replaces
    pixels = [r["train"]["batch_size"] * r["data"]["crop_size"][0] * r["data"]["crop_size"][1] for r in (large, short)]
    assert 1 <= pixels[0] / pixels[1] <= 1.25


def test_packaged_model_recipe_is_the_cpu_recipe_with_ohem_only() -> None:
    """camvid/pspnet_r18_cpu_ohem is the round-2 row 'train.loss=ohem' at 2800 iterations, nothing else."""
    ohem, _, changed = _changes_from_the_cpu_recipe("pspnet_r18_cpu_ohem")
    assert changed == {("train", "loss"), ("train", "output_dir")} and ohem["train"]["loss"] == "ohem"


def test_a_base_config_is_read_first_and_the_file_changes_only_the_keys_it_names(tmp_path) -> None:
    (tmp_path / "parent.yaml").write_text(yaml.safe_dump(
        {"model": {"depth": 18}, "train": {"lr": 0.03, "iters": 100}, "eval": {"base_size": 480}}))
    (tmp_path / "child.yaml").write_text("base: parent.yaml\ntrain:\n  iters: 400\neval:\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert (cfg.train.iters, cfg.train.lr, cfg.model.depth, cfg.eval.base_size) == (400, 0.03, 18, 480)
    # a base may itself have a base, and a shipped name works from any folder
    (tmp_path / "grandchild.yaml").write_text("base: child.yaml\ntrain:\n  lr: 0.01\n")
    cfg = load_config(tmp_path / "grandchild.yaml", ["train.iters=7"])
    assert (cfg.train.iters, cfg.train.lr, cfg.eval.base_size) == (7, 0.01, 480)
    (tmp_path / "named.yaml").write_text("base: camvid/pspnet_r18_cpu\ntrain:\n  iters: 5\n")
    shipped = load_config("camvid/pspnet_r18_cpu")
    assert load_config(tmp_path / "named.yaml").model_dump() == {
        **shipped.model_dump(), "train": {**shipped.train.model_dump(), "iters": 5}}


def test_a_bad_base_is_a_clear_error(tmp_path) -> None:
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match=r"a.yaml: 'base' goes round in a loop: a.yaml -> b.yaml -> a.yaml"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: camvid/pspnet_r18_cpux\n")
    with pytest.raises(ConfigError, match=r"c.yaml: base: .*did you mean camvid/pspnet_r18_cpu"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("base: [1]\n")
    with pytest.raises(ConfigError, match=r"d.yaml: 'base' must name a config"):
        load_config(tmp_path / "d.yaml")
    # a misspelled key in the file that names a base is still caught
    (tmp_path / "e.yaml").write_text("base: camvid/pspnet_r18_cpu\ntrain:\n  itres: 5\n")
    with pytest.raises(ConfigError, match=r"unknown key 'train.itres'.*train.iters"):
        load_config(tmp_path / "e.yaml")


# ------------------------------------------------------------------------- one schema for the model


def _edges(f):
    """(allowed, refused) values at the edges of a model field's schema: its bounds, choices or type."""
    if f.choices is not None:
        return list(f.choices), [7 if f.kind is int else "nope"]
    if f.kind is bool:
        return [True, False], ["maybe"]
    lo, hi = f.range
    below = lo - 1 if f.kind is int else lo - 0.5
    above = hi + 1 if f.kind is int else hi
    inside = [lo, hi] if not f.open_above else [lo, hi - 0.01]
    if not f.sequence:
        return inside, [below, above] + ([] if f.open_above else [hi * 2])
    n_lo, n_hi = f.length
    allowed = [[v] * n_hi for v in inside] if f.name == "stem_channels" else [[v] for v in inside] + [[lo] * n_hi]
    return allowed, [[below] * n_hi, [above], [], [lo] * (n_hi + 1)]


FIELDS = list(CONFIG_FIELDS.values())


@pytest.mark.parametrize("f", FIELDS, ids=[f.name for f in FIELDS])
def test_one_schema_bounds_the_model_config_the_weight_files_and_the_run_config(tmp_path, f) -> None:
    """Every model field's bounds come from PSPNetConfig's schema: a value just outside them is refused
    by PSPNetConfig, by the check of a weight file's metadata and by a YAML run config, each naming
    the field; a value on the edge is accepted by all three. A new bound changes all three."""
    allowed, refused = _edges(f)
    for value in allowed:
        PSPNetConfig(**{f.name: value})
        check_config_dict({f.name: value}, "w.safetensors")
        assert getattr(load_config(write(tmp_path, {"model": {f.name: value}})).model, f.name) == value
    for value in refused:
        with pytest.raises(ValueError, match=f.name):
            PSPNetConfig(**{f.name: value})
        with pytest.raises(WeightsError, match=rf"w\.safetensors: invalid model config.*{f.name}"):
            check_config_dict({f.name: value}, "w.safetensors")
        with pytest.raises(ConfigError, match=rf"'model\.{f.name}(\.\d+)?'"):
            load_config(write(tmp_path, {"model": {f.name: value}}))


def test_the_run_config_and_the_cli_take_defaults_and_choices_from_the_schema() -> None:
    section = Config().model
    for f in FIELDS:
        default = list(f.default) if f.sequence and f.default is not None else f.default
        assert getattr(section, f.name) == (None if f.name == "num_classes" else default), f.name
    convert = cli.build_parser()._subparsers._group_actions[0].choices["convert"]
    choices = {a.dest: tuple(a.choices) for a in convert._actions if a.choices}
    assert choices == {"depth": CONFIG_FIELDS["depth"].choices, "output_stride": CONFIG_FIELDS["output_stride"].choices,
                       "norm": CONFIG_FIELDS["norm"].choices}


def test_cross_field_checks_reach_the_run_config(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"stem_channels must be one positive width for the 7x7 stem"):
        load_config(write(tmp_path, {"model": {"deep_stem": False, "stem_channels": [32, 32, 64]}}))


# ------------------------------------------------------------------ keys that depend on the data, checked against it
def _levels_folder(root, size=(96, 128), levels=(0, 128, 255), n=3):
    import numpy as np
    from PIL import Image
    for split in ("train", "val"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i in range(n):
            band = np.arange(size[1]) * len(levels) // size[1]
            Image.fromarray(np.zeros((*size, 3), np.uint8)).save(root / split / "images" / f"{i}.png")
            Image.fromarray(np.asarray(levels, np.uint8)[np.broadcast_to(band, size)]).save(
                root / split / "masks" / f"{i}.png")
    return root


def test_inherited_keys_are_checked_against_the_data(tmp_path):
    from pspnet.config import check_config_against_data
    data = _levels_folder(tmp_path / "d")
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(f"base: camvid/pspnet_r18_cpu\nmodel:\n  num_classes: 3\ndata:\n  dataset: folder\n"
                        f"  root: {data}\n  label_map: {{0: 0, 128: 1, 255: 2}}\n")
    with pytest.raises(ConfigError, match=r"train.class_weights has 11 values but there are 3 classes: set "
                                          r"train.class_weights: auto .* or null"):
        check_config_against_data(load_config(cfg_file))
    with pytest.raises(ConfigError) as e:
        check_config_against_data(load_config(cfg_file, ["train.class_weights=auto", "data.label_map=null",
                                                         "data.class_names=[a,b]"]))
    assert "values [128] that are not classes 0..2: set data.label_map: {0: 0, 128: 1, 255: 2}" in str(e.value)
    assert "data.class_names has 2 names but there are 3 classes: set data.class_names: null" in str(e.value)
    warnings = check_config_against_data(load_config(cfg_file, ["train.class_weights=auto"]))
    assert len(warnings) == 1 and "eval.base_size: null" in warnings[0]
    assert warnings[0].startswith("eval.base_size: 480 resizes the long side of these 128x96 images to 480")
    assert check_config_against_data(load_config(cfg_file, ["train.class_weights=auto", "eval.base_size=null",
                                                            "data.crop_size=[96,128]"])) == []


def test_recorded_data_reading_is_checked_like_the_data_section():
    from pspnet.config import recorded_data_reading
    meta = {"trained_on": {"dataset": "folder", "label_map": [[0, 0], [128, 1], [255, "ignore"]], "ignore_index": 255,
                           "label_colors": None}}
    assert recorded_data_reading(meta, "w") == {"dataset": "folder", "label_map": {0: 0, 128: 1, 255: "ignore"},
                                                "ignore_index": 255}
    assert recorded_data_reading({}, "w") == {}
    with pytest.raises(ConfigError, match="trained_on.label_map must be a list of"):
        recorded_data_reading({"trained_on": {"label_map": {"128": 1}}}, "w")
    with pytest.raises(ConfigError, match="metadata trained_on"):
        recorded_data_reading({"trained_on": {"label_colors": [[300, 0, 0]]}}, "w")
