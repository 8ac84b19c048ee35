"""Weight files: our safetensors format, the original release's checkpoints, ImageNet backbones, safety."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import pytest
import torch

from pspnet.errors import WeightsError
from pspnet.models import PSPNet, ResNet, pspnet_resnet18, pspnet_resnet50
from pspnet.models.weights import compare_state, load_into, load_weights, read_state_dict, save_weights, to_pspnet_keys

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every float tensor (BN statistics included) distinct random values, so a copy is detectable."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if k.endswith("running_var"):
                v.copy_(torch.rand(v.shape, generator=g) + 0.5)
            elif v.is_floating_point():
                v.copy_(torch.randn(v.shape, generator=g) * 0.05)
            else:
                v.fill_(int(torch.randint(1, 100, (1,), generator=g)))
    return model


def assert_same_state(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------ our format
def test_our_format_round_trips_with_metadata(tmp_path, tiny_pspnet):
    model = randomise(tiny_pspnet(3, bins=(1, 2, 4), output_stride=16, deep_stem=False)).eval()
    path = tmp_path / "model.safetensors"
    names, palette = ["sky", "road", "car"], [(70, 130, 180), (128, 64, 128), (0, 0, 142)]
    save_weights(model, path, class_names=names, palette=palette, extra={"dataset": "demo"})
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temp file behind
    import os
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # readable like any new file, not mkstemp's 0600

    loaded, meta = load_weights(path)  # the file alone is enough
    assert not loaded.training
    assert loaded.config == model.config
    assert meta["class_names"] == names and meta["palette"] == palette and meta["dataset"] == "demo"
    assert_same_state(loaded.state_dict(), model.state_dict())
    x = torch.randn(1, 3, 37, 29)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))

    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata()
    assert raw["format"] == "pspnet-weights-v1"
    assert json.loads(raw["config"])["bins"] == [1, 2, 4]


def test_save_in_bf16_and_load_back_as_float32(tmp_path, tiny_pspnet):
    model = randomise(tiny_pspnet(2))
    path = tmp_path / "half.safetensors"
    save_weights(model, path, dtype=torch.bfloat16)
    state, _ = read_state_dict(path)
    assert state["cls.4.weight"].dtype == torch.bfloat16
    assert state["layer1.0.bn1.num_batches_tracked"].dtype == torch.int64  # ints untouched
    loaded, _ = load_weights(path)
    assert loaded.cls[4].weight.dtype == torch.float32
    torch.testing.assert_close(loaded.cls[4].weight, model.cls[4].weight, rtol=1e-2, atol=1e-2)


def test_training_checkpoint_format_loads(tmp_path, tiny_pspnet):
    model = randomise(tiny_pspnet(4))
    path = tmp_path / "last.pt"
    torch.save({"model": model.state_dict(), "iteration": 7, "config": model.config.to_dict(),
                "class_names": list("abcd"), "palette": [[1, 2, 3]] * 4}, path)
    loaded, meta = load_weights(path)
    assert meta["class_names"] == list("abcd")
    assert_same_state(loaded.state_dict(), model.state_dict())


def test_bad_metadata_is_reported(tmp_path, tiny_pspnet):
    model = tiny_pspnet(3)
    path = tmp_path / "m.safetensors"
    save_weights(model, path, class_names=["a", "b"])  # 2 names for 3 classes
    with pytest.raises(WeightsError, match="2 class names for 3 classes"):
        load_weights(path)
    save_weights(model, path, palette=[(300, 0, 0)] * 3)
    with pytest.raises(WeightsError, match="palette"):
        load_weights(path)


# ------------------------------------------------------------------ the original release
def fake_release_checkpoint(model: PSPNet, path: Path) -> dict:
    """A ``train_epoch_*.pth`` as the original release writes it (DataParallel keys, epoch, optimizer)."""
    state = {"module." + k: v for k, v in model.state_dict().items()}
    params = list(model.parameters())
    optimizer = {"state": {i: {"momentum_buffer": torch.zeros_like(p)} for i, p in enumerate(params[:3])},
                 "param_groups": [{"lr": 0.01, "momentum": 0.9, "dampening": 0, "weight_decay": 1e-4,
                                   "nesterov": False, "params": list(range(len(params)))}]}
    torch.save({"epoch": 200, "state_dict": state, "optimizer": optimizer}, path)
    return state


def test_original_release_checkpoint_loads(tmp_path):
    src = randomise(pspnet_resnet18(num_classes=19), seed=1)  # same layout logic as PSPNet-50, small
    path = tmp_path / "train_epoch_200.pth"
    fake_release_checkpoint(src, path)
    state, meta = read_state_dict(path)
    assert meta == {} and all(k.startswith("module.") for k in state)
    dst = pspnet_resnet18(num_classes=19)
    report = load_into(dst, state, source=str(path), strict=True)
    assert report["new"] == [] and report["reinitialised"] == []
    assert_same_state(dst.state_dict(), src.state_dict())
    with pytest.raises(WeightsError, match="carries no model config.*pspnet convert"):
        load_weights(path)


def test_original_release_layout_of_pspnet50_maps_key_for_key(tmp_path):
    """Keys and shapes only: a PSPNet-50 checkpoint built from the release's key list (tiny on disk)."""
    ref = {}
    for line in (ASSETS / "semseg_pspnet50_keys.tsv").read_text().splitlines()[1:]:
        k, s = line.split("\t")
        shape = tuple(int(x) for x in s.split("x")) if s else ()
        # a broadcast view saves one element of storage, whatever the shape
        ref["module." + k] = torch.tensor(0) if not shape else torch.zeros(1).expand(shape)
    path = tmp_path / "train_epoch_50.pth"
    torch.save({"epoch": 1, "state_dict": ref, "optimizer": {"state": {}, "param_groups": []}}, path)
    assert path.stat().st_size < 1_000_000
    state, _ = read_state_dict(path)
    assert set(to_pspnet_keys(state)) == {k[len("module."):] for k in ref}
    with torch.device("meta"):
        model = pspnet_resnet50(num_classes=19)
    assert compare_state(model, to_pspnet_keys(state)) == ([], [], [])
    with torch.device("meta"):
        model21 = pspnet_resnet50(num_classes=21)
    missing, unexpected, shape = compare_state(model21, to_pspnet_keys(state))
    assert missing == [] and unexpected == []
    assert sorted(s.split(":")[0] for s in shape) == ["aux.4.bias", "aux.4.weight", "cls.4.bias", "cls.4.weight"]


# ------------------------------------------------------------------ ImageNet backbones
@pytest.mark.parametrize("deep_stem", [False, True], ids=["torchvision-7x7", "release-deep-stem"])
def test_imagenet_backbone_maps_into_layer0(tmp_path, deep_stem, tiny_pspnet):
    torch.manual_seed(0)
    backbone = randomise(ResNet(18, deep_stem=deep_stem, output_stride=32, num_classes=10), seed=2)
    sd = backbone.state_dict()
    assert "fc.weight" in sd and ("conv3.weight" in sd) == deep_stem  # the layout we claim to read
    path = tmp_path / "resnet18.pth"
    torch.save(sd, path)
    state, _ = read_state_dict(path)

    model = tiny_pspnet(6, deep_stem=deep_stem)
    report = load_into(model, state, source=str(path), strict=False)
    msd = model.state_dict()
    pairs = {"conv1.weight": "layer0.0.weight", "bn1.running_var": "layer0.1.running_var",
             "bn1.weight": "layer0.1.weight", "layer4.1.conv2.weight": "layer4.1.conv2.weight",
             "layer2.0.downsample.1.running_mean": "layer2.0.downsample.1.running_mean"}
    if deep_stem:
        pairs.update({"conv2.weight": "layer0.3.weight", "bn2.bias": "layer0.4.bias",
                      "conv3.weight": "layer0.6.weight", "bn3.running_mean": "layer0.7.running_mean"})
    for src_key, dst_key in pairs.items():
        assert torch.equal(msd[dst_key], sd[src_key]), (src_key, dst_key)
    assert all(k.startswith(("ppm.", "cls.", "aux.")) for k in report["new"]) and report["new"]
    assert not any(k.startswith("fc.") for k in report["loaded"])
    # the dilated backbone computes what the ImageNet network computes at output stride 8
    ref = ResNet(18, deep_stem=deep_stem, output_stride=8).eval()
    ref.load_state_dict({k: v for k, v in sd.items() if not k.startswith("fc.")})
    model.eval()
    x = torch.randn(1, 3, 48, 40)
    with torch.no_grad():
        ours = model.layer4(model.layer3(model.layer2(model.layer1(model.layer0(x)))))
        torch.testing.assert_close(ours, ref.forward_features(x))


def test_backbone_with_wrong_stem_names_the_fix(tmp_path, tiny_pspnet):
    path = tmp_path / "resnet18.pth"
    torch.save(ResNet(18, deep_stem=False).state_dict(), path)
    state, _ = read_state_dict(path)
    with pytest.raises(WeightsError) as e:
        load_into(tiny_pspnet(3, deep_stem=True), state, source=str(path), strict=False)
    msg = str(e.value)
    assert "layer0.0.weight: file (64, 3, 7, 7) vs model (64, 3, 3, 3)" in msg
    assert "--no-deep-stem" in msg and str(path) in msg


# ------------------------------------------------------------------ mismatches and fine-tuning
def test_mismatch_lists_missing_unexpected_and_misshaped_keys(tiny_pspnet):
    state = dict(tiny_pspnet(4).state_dict())
    del state["layer3.1.bn2.running_mean"]
    state["layer9.0.conv1.weight"] = torch.zeros(1)
    state["ppm.features.0.1.weight"] = torch.zeros(7, 512, 1, 1)
    with pytest.raises(WeightsError) as e:
        load_into(tiny_pspnet(4), state, source="ckpt.pth")
    msg = str(e.value)
    assert msg.startswith("ckpt.pth: weights do not fit the model")
    assert "missing keys (1):\n    layer3.1.bn2.running_mean" in msg
    assert "unexpected keys (1):\n    layer9.0.conv1.weight" in msg
    assert "wrongly shaped keys (1):\n    ppm.features.0.1.weight: file (7, 512, 1, 1) vs model (128, 512, 1, 1)" in msg


def test_missing_classifier_is_an_error_when_strict(tiny_pspnet):
    state = dict(tiny_pspnet(4).state_dict())
    del state["cls.4.weight"]
    with pytest.raises(WeightsError, match=r"missing keys \(1\):\n    cls.4.weight"):
        load_into(tiny_pspnet(4), state)


def test_different_class_count_keeps_the_rest_and_reinitialises_classifiers(tmp_path, caplog, tiny_pspnet):
    src = randomise(tiny_pspnet(5), seed=3)
    path = tmp_path / "five.safetensors"
    save_weights(src, path, class_names=list("abcde"))
    dst = tiny_pspnet(3, seed=1)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    state, _ = read_state_dict(path)
    with pytest.raises(WeightsError, match="predicts 5 classes but the model was built for 3"):
        load_into(dst, state, source=str(path))  # not asked for: refused, nothing loaded
    assert all(torch.equal(v, before[k]) for k, v in dst.state_dict().items())
    with caplog.at_level(logging.WARNING, logger="pspnet.models.weights"):
        report = load_into(dst, state, source=str(path), reinit_classifier=True)
    assert sorted(report["reinitialised"]) == ["aux.4.bias", "aux.4.weight", "cls.4.bias", "cls.4.weight"]
    assert "re-initialised classifier layers ['aux.4', 'cls.4']" in caplog.text and str(path) in caplog.text
    after, ref = dst.state_dict(), src.state_dict()
    for k in after:
        if k.startswith(("cls.4.", "aux.4.")):
            assert torch.equal(after[k], before[k]), k  # fresh initialisation kept
        else:
            assert torch.equal(after[k], ref[k]), k  # every matching tensor copied
    model, meta = load_weights(path, num_classes=3)  # the same from the command-line path
    assert model.config.num_classes == 3 and meta["class_names"] is None
    assert torch.equal(model.layer4[1].conv2.weight, src.layer4[1].conv2.weight)


# ------------------------------------------------------------------ safety
class _Payload:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):  # unpickling this would create the file
        return (open, (str(self.target), "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer, msg", [("torch.save", "refused to load: the checkpoint references Python code"),
                                         ("pickle-2", "refused to load: the checkpoint references Python code"),
                                         ("pickle-4", "cannot read checkpoint")])
def test_loading_never_runs_pickled_code(tmp_path, writer, msg):
    target = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pth"
    obj = {"state_dict": {"layer0.0.weight": torch.zeros(1)}, "payload": _Payload(target)}
    if writer == "torch.save":
        torch.save(obj, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=int(writer[-1]))
    with pytest.raises(WeightsError, match=msg):
        read_state_dict(path)
    with pytest.raises(WeightsError):
        load_weights(path)
    assert not target.exists()


@pytest.mark.parametrize("content, msg", [(b"", "cannot read|not a valid"), (b"PK\x03\x04garbage", "cannot read"),
                                          (b"\x00" * 64, "cannot read|not a valid")])
def test_corrupt_files_raise_weights_error(tmp_path, content, msg):
    for name in ("x.pth", "x.safetensors"):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(WeightsError, match=f"{name}: "):
            read_state_dict(path)


def test_missing_file_and_truncated_safetensors(tmp_path, tiny_pspnet):
    with pytest.raises(WeightsError, match="weight file not found"):
        read_state_dict(tmp_path / "nope.safetensors")
    path = tmp_path / "m.safetensors"
    save_weights(tiny_pspnet(2), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="not a valid safetensors file"):
        load_weights(path)


def test_a_tensorless_or_non_dict_file_is_rejected(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(WeightsError, match="expected a state_dict"):
        read_state_dict(path)
    torch.save({"epoch": 3}, path)
    with pytest.raises(WeightsError, match="holds no tensors"):
        read_state_dict(path)


# ------------------------------------------------------------------ pspnet convert
def test_convert_original_release_from_the_command_line(tmp_path, capsys):
    from pspnet.cli import main
    src = randomise(pspnet_resnet18(num_classes=19), seed=4)
    ckpt = tmp_path / "train_epoch_100.pth"
    fake_release_checkpoint(src, ckpt)
    out = tmp_path / "model.safetensors"
    assert main(["convert", str(ckpt), str(out), "--class-names", ",".join(f"c{i}" for i in range(19))]) == 0
    printed = capsys.readouterr().out
    assert "original-release" in printed and "ResNet-18, deep 3x3 stem" in printed
    assert "new (initialised, train them): 0 tensors" in printed and f"wrote {out}" in printed
    model, meta = load_weights(out)
    assert model.config.depth == 18 and model.config.num_classes == 19
    assert meta["class_names"][3] == "c3" and len(meta["palette"]) == 19
    assert meta["source_kind"] == "original-release"
    assert_same_state(model.state_dict(), src.state_dict())


def test_convert_imagenet_backbone_needs_classes_and_reports_new_layers(tmp_path, capsys):
    from pspnet.cli import main
    path = tmp_path / "resnet18.pth"
    backbone = randomise(ResNet(18, deep_stem=False, num_classes=1000), seed=5)
    torch.save(backbone.state_dict(), path)
    out = tmp_path / "init.safetensors"
    assert main(["convert", str(path), str(out)]) == 2
    assert "--num-classes" in capsys.readouterr().err
    assert main(["convert", str(path), str(out), "--num-classes", "4", "--output-stride", "16"]) == 0
    printed = capsys.readouterr().out
    assert "imagenet-torchvision" in printed and "7x7 stem, output stride 16, 4 classes" in printed
    assert "new (initialised, train them): 40 tensors: ppm 24, cls 8, aux 8" in printed
    model, _ = load_weights(out)
    assert not model.config.deep_stem and model.config.output_stride == 16
    assert torch.equal(model.layer0[0].weight, backbone.conv1.weight)
    assert main(["convert", str(path), str(out), "--num-classes", "4", "--deep-stem"]) == 2
    assert "--no-deep-stem" in capsys.readouterr().err
