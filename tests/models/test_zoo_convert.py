"""pspnet convert on mmsegmentation and CSAILVision checkpoints (issue 14), without either zoo installed.

The zoo-layout checkpoints are made here from our own model: its state dict is renamed to the zoo's
keys with an inverse mapping written independently of ``pspnet.models.zoo``. What keeps these tests
honest about the zoos themselves is data recorded from the zoos' own models by
``bench/zoo_equivalence.py --record tests/assets`` (mmsegmentation 1.2.2, mit-semseg 1.0.0):
``*_keys.tsv`` (every key and shape: stem widths, downsample layers, head widths) and ``*_convs.tsv``
(kernel, stride, dilation and padding of every convolution: contracted dilation, BasicBlock conv2).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from pspnet.errors import WeightsError
from pspnet.models import PSPNet, PSPNetConfig
from pspnet.models.convert import convert
from pspnet.models.weights import check_config_dict, load_weights, save_weights

ASSETS = Path(__file__).resolve().parents[1] / "assets"

# The zoos' conventions, as the zoos' configs state them (mmseg pspnet_r18-d8 / CSAIL resnet50dilated + ppm_deepsup).
MMSEG_R18 = dict(num_classes=19, depth=18, stem_channels=(32, 32, 64), contract_dilation=True,
                 basic_conv2_dilated=False, ppm_channels=128, head_channels=128, aux_channels=64, align_corners=False)
CSAIL_R50 = dict(num_classes=150, depth=50, stem_channels=(64, 64, 128), contract_dilation=True,
                 basic_conv2_dilated=True, ppm_channels=512, head_channels=512, aux_channels=512, align_corners=False)


def table(name: str) -> list[list[str]]:
    return [ln.split("\t") for ln in (ASSETS / name).read_text().splitlines()[1:] if ln]


def shape_str(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape)) or "-"


# ------------------------------------------------------------------ inverse mappings (ours -> zoo)
_TO_MMSEG = [(r"^layer0\.(\d)\.", r"backbone.stem.\1."), (r"^(layer[1-4])\.", r"backbone.\1."),
             (r"^ppm\.features\.(\d+)\.1\.", r"decode_head.psp_modules.\1.1.conv."),
             (r"^ppm\.features\.(\d+)\.2\.", r"decode_head.psp_modules.\1.1.bn."),
             (r"^cls\.0\.", "decode_head.bottleneck.conv."), (r"^cls\.1\.", "decode_head.bottleneck.bn."),
             (r"^cls\.4\.", "decode_head.conv_seg."), (r"^aux\.0\.", "auxiliary_head.convs.0.conv."),
             (r"^aux\.1\.", "auxiliary_head.convs.0.bn."), (r"^aux\.4\.", "auxiliary_head.conv_seg.")]


def rename(key: str, rules) -> str:
    for pattern, repl in rules:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key)
    raise AssertionError(f"no zoo name for {key}")


def random_model(seed: int, **cfg) -> PSPNet:
    torch.manual_seed(seed)
    model = PSPNet(PSPNetConfig(**cfg))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def mmseg_checkpoint(model: PSPNet, path: Path, meta: dict | None = None) -> dict[str, torch.Tensor]:
    state = {rename(k, _TO_MMSEG): v.clone() for k, v in model.state_dict().items()}
    torch.save({"meta": meta or {}, "state_dict": state}, path)
    return state


def assert_geometry(model: PSPNet, convs_tsv: str, rules) -> None:
    """Every convolution of the converted model has the zoo's kernel, stride, dilation and padding."""
    recorded = {r[0]: tuple(r[1:]) for r in table(convs_tsv)}
    ours = {}
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            zoo = rename(name + ".weight", rules)[: -len(".weight")]
            ours[zoo] = ("x".join(map(str, m.kernel_size)), str(m.stride[0]), str(m.dilation[0]), str(m.padding[0]))
    assert sorted(ours) == sorted(recorded)
    wrong = {k: (ours[k], recorded[k]) for k in recorded if ours[k] != recorded[k]}
    assert not wrong, f"(ours, zoo's) kernel/stride/dilation/padding differ: {wrong}"


@pytest.fixture(scope="module")
def mmseg_r18():
    return random_model(1, **MMSEG_R18)


@pytest.fixture(scope="module")
def csail_r50():
    return random_model(2, **CSAIL_R50)


# ------------------------------------------------------------------ mmsegmentation
def test_mmseg_r18_checkpoint_gives_the_same_logits_and_records_the_zoo_protocol(tmp_path, mmseg_r18):
    ckpt = tmp_path / "pspnet_r18-d8_512x1024_80k_cityscapes_20201225_021458-09ffa746.pth"
    state = mmseg_checkpoint(mmseg_r18, ckpt)
    # the checkpoint has exactly the keys and shapes of mmsegmentation's own PSPNet R18-D8
    assert {k: shape_str(v) for k, v in state.items()} == dict(table("mmseg-r18-d8_keys.tsv"))
    out = tmp_path / "r18.safetensors"
    report = convert(ckpt, out)
    assert report["source_kind"] == "mmsegmentation" and report["new"] == [] and report["reinitialised"] == []
    model, meta = load_weights(out)
    cfg = model.config
    assert (cfg.stem_channels, cfg.contract_dilation, cfg.basic_conv2_dilated) == ((32, 32, 64), True, False)
    assert (cfg.ppm_channels, cfg.head_channels, cfg.aux_channels, cfg.align_corners) == (128, 128, 64, False)
    assert_geometry(model, "mmseg-r18-d8_convs.tsv", _TO_MMSEG)
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        assert torch.equal(model(x), mmseg_r18(x))
    # the zoo's dataset and protocol travel with the weights
    assert meta["class_names"][:3] == ["road", "sidewalk", "building"] and meta["palette"][0] == (128, 64, 128)
    assert meta["test_settings"] == {"base_size": 2048, "scales": [1.0], "flip": False, "mode": "whole",
                                     "crop_size": None, "stride_rate": pytest.approx(2 / 3)}
    assert meta["preprocessing"] == {"mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375],
                                     "channel_order": "RGB", "pixel_range": "0-255"}
    assert meta["zoo"]["name"] == "mmsegmentation" and meta["zoo"]["dataset"] == "CityscapesDataset"


def test_mmseg_config_text_is_read_without_running_it(tmp_path, mmseg_r18, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = "\n".join([
        "norm_cfg = dict(type='SyncBN', requires_grad=True)",
        "crop_size = (769, 769)",
        "dataset_type = 'CityscapesDataset'",
        "hack = __import__('os').system('touch PWNED')",
        "model = dict(type='EncoderDecoder', backbone=dict(type='ResNetV1c', depth=18, dilations=(1, 1, 2, 4), "
        "strides=(1, 2, 1, 1), norm_cfg=norm_cfg, contract_dilation=True), decode_head=dict(type='PSPHead', "
        "pool_scales=(1, 2, 3, 6), channels=128, align_corners=True), auxiliary_head=dict(type='FCNHead', "
        "align_corners=True), test_cfg=dict(mode='slide', crop_size=crop_size, stride=(513, 513)))",
        "test_pipeline = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=(2049, 1025), keep_ratio=True)]",
    ])
    ckpt = tmp_path / "latest.pth"
    mmseg_checkpoint(mmseg_r18, ckpt, meta={"config": text, "CLASSES": [f"k{i}" for i in range(19)],
                                            "PALETTE": [[i, i, i] for i in range(19)]})
    convert(ckpt, tmp_path / "r18.safetensors")
    model, meta = load_weights(tmp_path / "r18.safetensors")
    assert not (tmp_path / "PWNED").exists()
    assert model.config.align_corners is True
    assert meta["test_settings"]["mode"] == "sliding" and meta["test_settings"]["crop_size"] == [769, 769]
    assert meta["test_settings"]["stride_rate"] == pytest.approx(513 / 769, abs=1e-6)
    assert meta["test_settings"]["base_size"] == 2049
    assert meta["class_names"][5] == "k5" and meta["palette"][5] == (5, 5, 5)
    assert meta["zoo"]["config_from"] == "checkpoint meta"


def test_mmseg_r50_layout_matches_the_zoo(tmp_path):
    """ResNetV1c-50: 32-32-64 stem, layer1.0 takes 64 channels (with a downsample), aux width 256."""
    cfg = dict(num_classes=19, depth=50, stem_channels=(32, 32, 64), contract_dilation=True, basic_conv2_dilated=False,
               ppm_channels=512, head_channels=512, aux_channels=256, align_corners=False)
    model = PSPNet(PSPNetConfig(**cfg))
    state = {rename(k, _TO_MMSEG): shape_str(v) for k, v in model.state_dict().items()}
    assert state == dict(table("mmseg-r50-d8_keys.tsv"))
    assert_geometry(model, "mmseg-r50-d8_convs.tsv", _TO_MMSEG)


# ------------------------------------------------------------------ CSAILVision
def test_csail_pair_from_the_command_line_gives_the_same_logits(tmp_path, csail_r50, capsys, csail_checkpoints,
                                                                 csail_key_rules):
    from pspnet.cli import main
    enc, dec = csail_checkpoints(csail_r50, tmp_path / "ade20k-resnet50dilated-ppm_deepsup")
    assert {k: shape_str(v) for k, v in torch.load(enc, weights_only=True).items()} == dict(
        table("csail-resnet50dilated-ppm_deepsup_encoder_keys.tsv"))
    assert {k: shape_str(v) for k, v in torch.load(dec, weights_only=True).items()} == dict(
        table("csail-resnet50dilated-ppm_deepsup_decoder_keys.tsv"))
    out = tmp_path / "csail.safetensors"
    assert main(["convert", str(enc), str(dec), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "(csailvision): ResNet-50, 64-64-128 deep 3x3 stem" in printed and "contracted dilation" in printed
    assert f"wrote {out}" in printed
    model, meta = load_weights(out)
    assert_geometry(model, "csail-resnet50dilated-ppm_deepsup_convs.tsv", csail_key_rules)
    x = torch.randn(1, 3, 40, 48)
    with torch.no_grad():
        assert torch.equal(model(x), csail_r50(x))
    assert meta["class_names"][:2] == ["wall", "building"] and meta["palette"][0] == (120, 120, 120)
    assert meta["test_settings"] == {"base_size": 800, "scales": [0.5, 0.625, 0.75, 0.875, 1.0], "flip": False,
                                     "mode": "whole", "crop_size": None, "stride_rate": pytest.approx(2 / 3)}
    assert meta["test_resize"]["short_sides"] == [300, 375, 450, 525, 600]
    # decoder first works too; the BatchNorm extras are not in the file
    out2 = tmp_path / "csail2.safetensors"
    assert main(["convert", str(dec), str(enc), str(out2)]) == 0
    from safetensors import safe_open
    with safe_open(str(out2), framework="pt") as f:
        assert not [k for k in f.keys() if "_tmp_" in k or "_running_iter" in k]


def test_one_half_of_a_csail_pair_or_three_inputs_are_refused(tmp_path, csail_r50, capsys, csail_checkpoints):
    from pspnet.cli import main
    enc, dec = csail_checkpoints(csail_r50, tmp_path / "ckpt")
    with pytest.raises(WeightsError, match="give its decoder too"):
        convert(enc, tmp_path / "x.safetensors")
    with pytest.raises(WeightsError, match="give its encoder too"):
        convert(dec, tmp_path / "x.safetensors")
    with pytest.raises(WeightsError, match="is a CSAILVision encoder and .* is a CSAILVision encoder"):
        convert([enc, enc], tmp_path / "x.safetensors")
    assert main(["convert", str(enc), str(dec), str(dec), str(tmp_path / "x.safetensors")]) == 2
    assert "ENCODER DECODER OUT" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


# ------------------------------------------------------------------ unknown layouts
def test_an_unknown_layout_lists_what_was_recognised_and_what_was_not(tmp_path, capsys):
    from pspnet.cli import main
    deeplab = {"backbone.stem.0.weight": torch.zeros(32, 3, 3, 3),
               "backbone.layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1),
               "backbone.layer1.0.bn1.weight": torch.zeros(64),
               **{f"decode_head.aspp_modules.{i}.conv.weight": torch.zeros(8, 8, 3, 3) for i in range(4)},
               "decode_head.conv_seg.weight": torch.zeros(19, 8, 1, 1)}
    ckpt = tmp_path / "deeplabv3_r50-d8.pth"
    torch.save({"meta": {}, "state_dict": deeplab}, ckpt)
    assert main(["convert", str(ckpt), str(tmp_path / "out.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "not of a PSPNet" in err
    assert re.search(r"recognised: 4 tensors under 3 prefixes", err)
    assert re.search(r"backbone\.layer1 +2 tensors +\(mmsegmentation PSPNet\)", err)
    assert re.search(r"not recognised: 4 tensors under 1 prefixes\n +decode_head\.aspp_modules +4 tensors", err)
    other = tmp_path / "segformer.pth"
    torch.save({"encoder.blocks.0.attn.weight": torch.zeros(2), "encoder.blocks.1.attn.weight": torch.zeros(2),
                "head.weight": torch.zeros(2)}, other)
    with pytest.raises(WeightsError) as e:
        convert(other, tmp_path / "out.safetensors")
    msg = str(e.value)
    assert "not a known PSPNet checkpoint layout" in msg and "recognised: 0 tensors under 0 prefixes" in msg
    assert re.search(r"encoder\.blocks +2 tensors", msg) and re.search(r"head +1 tensors", msg)
    assert not (tmp_path / "out.safetensors").exists()


def test_new_config_fields_are_validated_in_weight_files():
    check_config_dict({"stem_channels": [32, 32, 64], "contract_dilation": True, "basic_conv2_dilated": False,
                       "ppm_channels": 128}, "f")
    check_config_dict({"stem_channels": None, "ppm_channels": None}, "f")
    for bad, what in [({"stem_channels": [32, 10 ** 9, 64]}, "outside the allowed range"),
                      ({"ppm_channels": 10 ** 7}, "outside the allowed range"),
                      ({"contract_dilation": "yes"}, "wrong type"), ({"stem_channels": "32"}, "wrong type")]:
        with pytest.raises(WeightsError, match=what):
            check_config_dict(bad, "f.safetensors")
    with pytest.raises(ValueError, match="stem_channels must be three positive widths"):
        PSPNetConfig(stem_channels=(32, 64))
    # defaults are the original release's: old files (no such keys) build the same model
    assert json.loads(json.dumps(PSPNetConfig().to_dict()))["stem_channels"] is None


def test_unset_options_keep_the_files_config_and_set_ones_override_it(tmp_path, tiny_pspnet):
    """`pspnet convert`'s help says the model options default to the file's values: an OS16 file stays
    OS16 unless --output-stride says otherwise."""
    src = tmp_path / "os16.safetensors"
    save_weights(tiny_pspnet(3, output_stride=16).eval(), src)
    convert(src, tmp_path / "kept.safetensors")
    convert(src, tmp_path / "os8.safetensors", output_stride=8)
    assert load_weights(tmp_path / "kept.safetensors")[0].config.output_stride == 16
    assert load_weights(tmp_path / "os8.safetensors")[0].config.output_stride == 8
