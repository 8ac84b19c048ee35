"""int8 weight storage (used for the packaged model): smaller files that load back as float."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from pspnet.errors import WeightsError
from pspnet.models.weights import INT8_SCALE_SUFFIX, load_weights, quantize_int8, save_weights


def test_quantize_int8_error_bound():
    w = torch.randn(8, 4, 3, 3)
    q, scale = quantize_int8(w)
    assert q.dtype == torch.int8 and scale.shape == (8,)
    err = (q.float() * scale.view(-1, 1, 1, 1) - w).abs()
    assert (err <= scale.view(-1, 1, 1, 1) / 2 + 1e-7).all()  # at most half a quantisation step


def test_int8_storage_round_trip_without_aux(tmp_path, tiny_pspnet):
    model = tiny_pspnet(5, head_channels=32, aux_channels=16).eval()
    fp16, int8 = tmp_path / "fp16.safetensors", tmp_path / "int8.safetensors"
    save_weights(model, fp16, dtype=torch.float16)
    save_weights(model, int8, storage="int8", include_aux=False, class_names=list("abcde"))
    assert int8.stat().st_size < 0.6 * fp16.stat().st_size
    raw = load_file(int8)
    assert raw["layer1.0.conv1.weight"].dtype == torch.int8 and not any(k.startswith("aux.") for k in raw)
    loaded, meta = load_weights(int8)
    assert loaded.config.aux is False and meta["class_names"] == list("abcde")
    for k, v in loaded.state_dict().items():
        ref = model.state_dict()[k]
        if v.is_floating_point() and v.dim() == 4:
            step = ref.flatten(1).abs().amax(1) / 127
            assert ((v - ref).abs().flatten(1).amax(1) <= step / 2 + 1e-6).all(), k


@pytest.mark.parametrize("damage", ["drop_scale", "bad_scale_shape"])
def test_int8_storage_damaged_file_is_refused(tmp_path, damage, tiny_pspnet):
    path = tmp_path / "w.safetensors"
    save_weights(tiny_pspnet(5, head_channels=32, aux_channels=16).eval(), path, storage="int8")
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    state = load_file(path)
    key = "layer1.0.conv1.weight" + INT8_SCALE_SUFFIX
    if damage == "drop_scale":
        del state[key]
    else:
        state[key] = torch.ones(3)
    save_file(state, path, metadata=meta)
    with pytest.raises(WeightsError, match="layer1.0.conv1.weight"):
        load_weights(path)


def test_convert_makes_the_packaged_layout_and_keeps_the_test_settings(tmp_path, tiny_pspnet, capsys):
    """``pspnet convert final.safetensors packaged.safetensors --int8-storage --no-aux`` is how the
    packaged model is made: the recorded test settings and training record travel, the int8 agreement
    (measured on other tensors) does not."""
    from pspnet.cli import main
    from pspnet.models.weights import read_metadata
    model = tiny_pspnet(5, head_channels=32, aux_channels=16).eval()
    src, out = tmp_path / "final.safetensors", tmp_path / "packaged.safetensors"
    settings = {"base_size": 48, "flip": True}
    save_weights(model, src, class_names=list("abcde"),
                 extra={"test_settings": settings, "trained_on": {"split": "train+val", "images": 7},
                        "int8_agreement": {"agreement": 0.999}})
    assert main(["convert", str(src), str(out), "--int8-storage", "--no-aux"]) == 0
    meta = read_metadata(out)
    assert meta["test_settings"] == settings and meta["trained_on"]["split"] == "train+val"
    assert "int8_agreement" not in meta and meta["storage"] == "int8" and meta["class_names"] == list("abcde")
    raw = load_file(out)
    assert raw["layer1.0.conv1.weight"].dtype == torch.int8 and not any(k.startswith("aux.") for k in raw)
    assert load_weights(out)[0].config.aux is False
