"""The training engine on tiny generated data: outputs, data order, LR schedule, loss normalisation
(gradient accumulation), freezing, NaN and stop handling, logs."""

from __future__ import annotations

import copy
import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from pspnet.config import load_config
from pspnet.data.datasets import build_dataset, dataset_info
from pspnet.data.datasets.base import map_label
from pspnet.errors import ConfigError, DataError, TrainingError
from pspnet.models.weights import read_state_dict
from pspnet.training.sampler import EpochSampler
from pspnet.training.schedule import poly_lr, sgd
from pspnet.training.state import load_checkpoint
from pspnet.training.trainer import Trainer, train


@pytest.fixture(scope="module")
def data(tmp_path_factory, folder_dataset) -> Path:
    return folder_dataset(tmp_path_factory.mktemp("train_data"), splits=("train", "val"), n=8, seed=2,
                               ignore="random_rows")


# ------------------------------------------------------------------------------------ pure functions
def test_epoch_sampler_ranks_partition_the_single_process_batches() -> None:
    n, batch, world = 23, 3, 2
    single = list(EpochSampler(n, seed=5, batch_size=batch * world))
    ranks = [list(EpochSampler(n, seed=5, rank=r, world_size=world, batch_size=batch)) for r in range(world)]
    assert len(single) == (n // (batch * world)) * batch * world == 18  # only full global batches
    assert all(len(r) == len(single) // world for r in ranks)
    for step in range(len(single) // (batch * world)):
        glob = single[step * batch * world:(step + 1) * batch * world]
        parts = [x for r in ranks for x in r[step * batch:(step + 1) * batch]]
        assert sorted(parts) == sorted(glob)  # same (index, augmentation seed) pairs
    assert len({i for i, _ in single}) == len(single)  # no sample twice in an epoch


def test_epoch_sampler_order_depends_on_seed_and_epoch_and_resumes_mid_epoch() -> None:
    s = EpochSampler(10, seed=1)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    assert [i for i, _ in e0] != [i for i, _ in e1] and sorted(i for i, _ in e0) == list(range(10))
    s.set_epoch(1, start=4)
    assert list(s) == e1[4:]
    assert list(EpochSampler(10, seed=2)) != e0


def test_poly_lr_with_warmup() -> None:
    assert poly_lr(0.01, 0, 100, 0.9) == 0.01
    assert poly_lr(0.01, 50, 100, 0.9) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert 0 < poly_lr(0.01, 99, 100, 0.9) < 0.01 * 0.02 ** 0.9
    assert [poly_lr(0.01, i, 100, 0.9, warmup=4) for i in range(4)] == pytest.approx([0.0025, 0.005, 0.0075, 0.01])


def _sgd_run(model, optimizer, steps: int) -> list[torch.Tensor]:
    """``steps`` updates from fixed gradients; the parameters after them."""
    params = list(model.parameters())
    for i in range(steps):
        for p in params:
            p.grad = torch.full_like(p, 0.01 * (i + 1)) + 0.001 * torch.arange(p.numel()).view_as(p).sin()
        optimizer.step()
    return [p.detach().clone() for p in params]


def _two_groups(model) -> list[dict]:
    return [{"params": list(model.backbone_parameters())}, {"params": list(model.head_parameters()), "lr": 0.1}]


def test_sgd_is_fused_on_cpu_and_steps_as_the_per_tensor_loop(tiny_pspnet) -> None:
    fused_model, loop_model = tiny_pspnet(3, seed=1), tiny_pspnet(3, seed=1)
    fused = sgd(_two_groups(fused_model), lr=0.03, momentum=0.9, weight_decay=2e-4)
    assert all(g["fused"] for g in fused.param_groups)
    loop = torch.optim.SGD(_two_groups(loop_model), lr=0.03, momentum=0.9, weight_decay=2e-4)
    for a, b in zip(_sgd_run(fused_model, fused, 5), _sgd_run(loop_model, loop, 5)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    # the fp16 loss scaler's skip of a step with an inf gradient works through the fused kernel as well
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    before = [p.detach().clone() for p in fused_model.parameters()]
    scaler.scale(torch.ones(()))  # what scales the loss sets the scaler up
    for p in fused_model.parameters():
        p.grad = torch.ones_like(p)
    p.grad[0] = float("inf")
    scaler.step(fused)
    assert all(torch.equal(a, b) for a, b in zip(before, fused_model.parameters()))
    scaler.update()
    assert scaler.get_scale() < 2.0 ** 8


def test_the_fused_update_of_channels_last_weights_is_torchs_bit_for_bit(tiny_pspnet) -> None:
    """FusedSGD hands torch's kernel channels_last tensors as their memory (no copies): the same weights
    and momentum buffers as torch's fused SGD, also where a gradient's layout differs from its weight's."""
    ours_model = tiny_pspnet(3, seed=4).to(memory_format=torch.channels_last)
    torch_model = tiny_pspnet(3, seed=4).to(memory_format=torch.channels_last)
    ours = sgd(_two_groups(ours_model), lr=0.03, momentum=0.9, weight_decay=2e-4)
    theirs = torch.optim.SGD(_two_groups(torch_model), lr=0.03, momentum=0.9, weight_decay=2e-4, fused=True)
    assert any(p.dim() == 4 and not p.is_contiguous() for p in ours_model.parameters())
    for step in range(4):
        for i, (a, b) in enumerate(zip(ours_model.parameters(), torch_model.parameters())):
            g = torch.randn(a.shape, generator=torch.Generator().manual_seed(100 * step + i))
            layout = torch.contiguous_format if step == 2 and i % 2 else torch.channels_last
            a.grad = g.contiguous(memory_format=layout) if g.dim() == 4 else g
            b.grad = a.grad.clone()
        ours.step()
        theirs.step()
    assert all(torch.equal(a, b) for a, b in zip(ours_model.parameters(), torch_model.parameters()))
    mine, torchs = ours.state_dict(), theirs.state_dict()
    assert mine["param_groups"] == torchs["param_groups"]
    assert all(torch.equal(mine["state"][k]["momentum_buffer"], torchs["state"][k]["momentum_buffer"])
               for k in torchs["state"])


def test_resuming_an_unfused_optimizer_state_keeps_the_loop(tiny_pspnet) -> None:
    """A checkpoint written before the fused update resumes with the per-tensor loop, bit for bit."""
    old_model, new_model = tiny_pspnet(3, seed=2), tiny_pspnet(3, seed=2)
    old = torch.optim.SGD([{"params": list(old_model.parameters())}], lr=0.03, momentum=0.9, weight_decay=2e-4)
    _sgd_run(old_model, old, 2)
    new_model.load_state_dict(old_model.state_dict())
    resumed = sgd([{"params": list(new_model.parameters())}], lr=0.03, momentum=0.9, weight_decay=2e-4)
    resumed.load_state_dict(copy.deepcopy(old.state_dict()))  # as if read from a file: no shared buffers
    assert resumed.param_groups[0]["fused"] is None
    for a, b in zip(_sgd_run(new_model, resumed, 3), _sgd_run(old_model, old, 3)):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------ whole runs
def test_run_writes_every_output(data: Path, tmp_path: Path, tiny_run_config) -> None:
    out = tmp_path / "run"
    res = train(tiny_run_config(data, out, "train.val_every=1", "train.ckpt_every=1"), progress=False)
    assert res.iterations == 2 and res.best_miou is not None and res.final_metrics is not None
    for name in ("last.pt", "final.safetensors", "best.safetensors", "log.jsonl", "log.csv", "curves.png",
                 "config.yaml"):
        assert (out / name).is_file(), name
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records] == ["train", "val", "train", "val"]
    assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in records if r["kind"] == "train")
    assert all(0 <= r["mIoU"] <= 1 and len(r["per_class_iou"]) == 3 for r in records if r["kind"] == "val")
    with open(out / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["kind"] for r in rows] == [r["kind"] for r in records]
    assert float(rows[0]["loss"]) == pytest.approx(records[0]["loss"]) and rows[0]["mIoU"] == ""
    assert float(rows[1]["mIoU"]) == pytest.approx(records[1]["mIoU"])
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["iteration"] == 2 and ckpt["class_names"] == ["class_0", "class_1", "class_2"]
    state, meta = read_state_dict(out / "final.safetensors")
    assert meta["config"]["num_classes"] == 3 and torch.equal(state["cls.4.bias"], ckpt["model"]["cls.4.bias"])
    trained_on = meta["trained_on"]  # what the weights learnt from travels with them
    assert trained_on["split"] == "train" and trained_on["iterations"] == 2 and trained_on["images"] > 0
    assert load_config(out / "config.yaml").train.iters == 2  # the run's config, re-loadable


def test_gradient_accumulation_equals_the_full_batch(data: Path, tmp_path: Path, tiny_run_config) -> None:
    """batch 4 in 2 micro-batches of 2 == batch 4 at once. GroupNorm and no dropout, because BatchNorm
    statistics (and dropout masks) of a micro-batch differ from the full batch's by design. The
    images ignore very different numbers of pixels: averaging the two micro-batch means instead of
    normalising by the whole batch's pixel count makes the updates differ by ~36% here."""
    extra = ("model.norm=gn", "model.dropout=0", "train.batch_size=4", "train.iters=1")
    updates, losses = [], []
    for name, more in (("full", ()), ("acc", ("train.accumulate=2",))):
        trainer = Trainer(tiny_run_config(data, tmp_path / name, *extra, *more), progress=False)
        init = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        res = trainer.fit()
        updates.append({k: trainer.model.state_dict()[k] - init[k] for k in init})
        losses.append(res.history[0]["loss"])
    full, acc = updates
    changed = [k for k in full if full[k].norm() > 0]
    assert len(changed) > 80  # every parameter tensor of the GroupNorm model
    for k in changed:
        rel = float((full[k] - acc[k]).norm() / full[k].norm())
        assert rel < 1e-3, f"{k}: updates differ by {rel:.2e} (relative)"
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_learning_rates_of_real_iterations(data: Path, tmp_path: Path, tiny_run_config) -> None:
    """Four real iterations: every trainable parameter sits in exactly one SGD group (the backbone's
    or the head's), the groups get base_lr * poly(it) and head_lr_mult * base_lr * poly(it), with
    poly written out here, and SGD applies those rates (first step: momentum buffer = gradient)."""
    base, mult, power, iters, wd = 0.02, 7.0, 1.5, 4, 1e-4
    trainer = Trainer(tiny_run_config(data, tmp_path / "lr", f"train.lr={base}", f"train.head_lr_mult={mult}",
                                      f"train.power={power}", f"train.iters={iters}", f"train.weight_decay={wd}"),
                      progress=False)
    model, opt = trainer.model, trainer.optimizer
    named = dict(model.named_parameters())
    stages = ("layer0", "layer1", "layer2", "layer3", "layer4")
    backbone = {id(p) for n, p in named.items() if n.split(".")[0] in stages}
    head = {id(p) for n, p in named.items() if n.split(".")[0] in ("ppm", "cls", "aux")}
    assert backbone and head and len(backbone) + len(head) == len(named)
    groups = {g["name"]: [id(p) for p in g["params"]] for g in opt.param_groups}
    assert sorted(groups) == ["backbone", "head"]
    all_ids = [i for ids in groups.values() for i in ids]
    assert len(all_ids) == len(set(all_ids)) == len(named)  # each parameter once, none left out
    assert set(groups["backbone"]) == backbone and set(groups["head"]) == head

    seen: list[tuple[int, dict[str, float]]] = []
    real_step = opt.step
    probe = {"backbone": named["layer1.0.conv1.weight"], "head": named["cls.0.weight"]}

    def step(*args, **kwargs):
        lrs = {g["name"]: g["lr"] for g in opt.param_groups}
        seen.append((trainer.iteration, lrs))
        if len(seen) == 1:  # first step: p -= lr * (grad + wd * p)
            before = {k: (p.detach().clone(), p.grad.detach().clone()) for k, p in probe.items()}
            out = real_step(*args, **kwargs)
            for k, (p0, grad) in before.items():
                assert grad.abs().sum() > 0, k
                torch.testing.assert_close(probe[k].detach(), p0 - lrs[k] * (grad + wd * p0), rtol=1e-5, atol=1e-9)
            return out
        return real_step(*args, **kwargs)

    opt.step = step
    trainer.fit()
    assert [it for it, _ in seen] == list(range(iters))
    for it, lrs in seen:
        poly = (1 - it / iters) ** power
        assert lrs["backbone"] == pytest.approx(base * poly, rel=1e-12), it
        assert lrs["head"] == pytest.approx(mult * base * poly, rel=1e-12), it
    logged = [json.loads(line) for line in (tmp_path / "lr" / "log.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in logged if r["kind"] == "train"] == pytest.approx(
        [base * (1 - it / iters) ** power for it in range(iters)], rel=1e-12)


def _bn_modules(module: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in module.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _state_around_one_step(cfg) -> tuple[Trainer, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(trainer, state before, state after) for a run of ``cfg`` (one iteration)."""
    trainer = Trainer(cfg, progress=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    return trainer, before, trainer.model.state_dict()


def test_freeze_backbone_keeps_backbone_and_its_bn_statistics(data: Path, tmp_path: Path, tiny_run_config) -> None:
    trainer, before, after = _state_around_one_step(tiny_run_config(data, tmp_path / "fb", "train.freeze_backbone=true",
                                                                    "train.iters=1"))
    backbone = [k for k in before if k.startswith(("layer0.", "layer1.", "layer2.", "layer3.", "layer4."))]
    assert any("running_mean" in k for k in backbone)
    for k in backbone:  # weights and BN running statistics alike
        assert torch.equal(before[k], after[k]), k
    assert not torch.equal(before["cls.0.weight"], after["cls.0.weight"])
    assert not torch.equal(before["ppm.features.0.2.running_mean"], after["ppm.features.0.2.running_mean"])
    assert all(g["name"] == "head" for g in trainer.optimizer.param_groups)


def test_freeze_bn_keeps_every_bn_and_trains_the_convolutions(data: Path, tmp_path: Path, tiny_run_config) -> None:
    trainer, before, after = _state_around_one_step(tiny_run_config(data, tmp_path / "fbn", "train.freeze_bn=true",
                                                                    "train.iters=1"))
    bn_keys = [f"{n}.{k}" for n, m in _bn_modules(trainer.model) for k in m.state_dict()]
    assert len(bn_keys) > 50
    for k in bn_keys:
        assert torch.equal(before[k], after[k]), k
    assert not torch.equal(before["layer1.0.conv1.weight"], after["layer1.0.conv1.weight"])
    assert not torch.equal(before["cls.0.weight"], after["cls.0.weight"])


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(data: Path, tmp_path: Path,
                                                                     monkeypatch, tiny_run_config) -> None:
    out = tmp_path / "nan"
    trainer = Trainer(tiny_run_config(data, out, "train.ckpt_every=1", "train.iters=3"), progress=False)
    real = trainer.criterion.forward
    calls = []

    def poisoned(outputs, target):
        calls.append(1)
        loss, parts = real(outputs, target)
        return (loss * float("nan") if len(calls) == 2 else loss), parts

    monkeypatch.setattr(trainer.criterion, "forward", poisoned)
    with pytest.raises(TrainingError, match=r"loss is nan at iteration 1.*last good checkpoint is .*last\.pt"):
        trainer.fit()
    assert load_checkpoint(out / "last.pt")["iteration"] == 1
    assert not (out / "final.safetensors").exists()


def test_stop_request_saves_and_returns(data: Path, tmp_path: Path, tiny_run_config) -> None:
    """What SIGINT/SIGTERM do (the handler sets the flag): finish the step, save last.pt, return."""
    out = tmp_path / "stop"
    trainer = Trainer(tiny_run_config(data, out, "train.iters=5"), progress=False)
    step = trainer._step

    def step_then_signal(*args):
        step(*args)
        trainer._request_stop(15, None)

    trainer._step = step_then_signal
    res = trainer.fit()
    assert res.iterations == 1 and res.weights == out / "last.pt"
    assert load_checkpoint(out / "last.pt")["iteration"] == 1
    assert not (out / "final.safetensors").exists()


def test_config_problems_found_before_training(data: Path, tmp_path: Path, tiny_run_config) -> None:
    with pytest.raises(ConfigError, match=r"train.accumulate=4 .* train.batch_size=2"):
        Trainer(tiny_run_config(data, tmp_path / "a", "train.accumulate=4"), progress=False)
    with pytest.raises(ConfigError, match=r"class_weights has 2 values but the model has 3 classes"):
        Trainer(tiny_run_config(data, tmp_path / "b", "train.class_weights=[1,2]"), progress=False)
    with pytest.raises(TrainingError, match="checkpoint not found"):
        Trainer(tiny_run_config(data, tmp_path / "c"), progress=False, resume=tmp_path / "nope.pt")


def test_focus_classes_by_name_or_id_reach_the_crop(data: Path, tmp_path: Path, tiny_run_config) -> None:
    names = Trainer(tiny_run_config(data, tmp_path / "a"), progress=False).info.class_names
    trainer = Trainer(tiny_run_config(data, tmp_path / "b", f"data.focus_classes=[{names[2]},1]",
                                      "data.focus_prob=0.25"), progress=False)
    transform = trainer.train_set.transform
    assert transform.focus_classes == (2, 1) and transform.focus_prob == 0.25
    assert trainer.fit().iterations == 2  # through the data loader
    with pytest.raises(ConfigError, match=rf"data.focus_classes: 'nope' is not a class .*{names[0]}"):
        Trainer(tiny_run_config(data, tmp_path / "c", "data.focus_classes=[nope]"), progress=False)
    with pytest.raises(ConfigError, match="data.focus_classes: 3 is not a class"):
        Trainer(tiny_run_config(data, tmp_path / "d", "data.focus_classes=[3]"), progress=False)


def test_tensorboard_missing_is_a_clear_error(data: Path, tmp_path: Path, monkeypatch, tiny_run_config) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r"train.tensorboard=true needs the 'tensorboard' package.*pip install"):
        Trainer(tiny_run_config(data, tmp_path / "tb", "train.tensorboard=true"), progress=False)


def test_tensorboard_event_file(data: Path, tmp_path: Path, tiny_run_config) -> None:
    """tensorboard is a dev dependency: this runs in CI rather than skipping."""
    out = tmp_path / "tb"
    train(tiny_run_config(data, out, "train.tensorboard=true", "train.iters=1"), progress=False)
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


# ------------------------------------------------------------------------------------ ignore index
def test_a_non_255_ignore_index_trains_exactly_like_255(data: Path, tmp_path: Path, tiny_run_config) -> None:
    """The same data with its void pixels written 200 instead of 255, and data.ignore_index=200: the
    labels, the augmentation's padding, the loss and the metrics all use 200, so the run is the 255
    run bit for bit. A part that kept 255 (padding, label check, loss) fails or changes the numbers."""
    relabelled = tmp_path / "data200"
    for f in data.rglob("*.png"):
        dst = relabelled / f.relative_to(data)
        dst.parent.mkdir(parents=True, exist_ok=True)
        arr = np.array(Image.open(f))
        if f.parent.name == "labels":
            assert (arr == 255).any() and not (arr == 200).any()
            arr[arr == 255] = 200
        Image.fromarray(arr).save(dst)
    runs = []
    for root, out, extra in ((data, "r255", ()), (relabelled, "r200", ("data.ignore_index=200",))):
        runs.append(train(tiny_run_config(root, tmp_path / out, "train.val_every=1", *extra), progress=False))
    a, b = runs
    assert [r["loss"] for r in a.history if r["kind"] == "train"] == [r["loss"] for r in b.history
                                                                         if r["kind"] == "train"]
    assert a.final_metrics["mIoU"] == b.final_metrics["mIoU"] and a.final_metrics["allAcc"] < 1
    wa, wb = read_state_dict(a.weights)[0], read_state_dict(b.weights)[0]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_named_datasets_read_their_void_as_the_configured_ignore_index(tmp_path: Path) -> None:
    """CamVid (id table: 11 = void), VOC (train ids with 255 borders) and KITTI road (colour coded,
    black = void) give the run's ignore index, not their 255, for their unlabelled pixels."""
    image = np.zeros((2, 3, 3), np.uint8)
    Image.fromarray(image).save(tmp_path / "img.png")
    Image.fromarray(np.array([[0, 5, 11], [11, 10, 1]], np.uint8)).save(tmp_path / "lbl.png")
    (tmp_path / "train.txt").write_text("img.png lbl.png\n")
    camvid = build_dataset("camvid", tmp_path, "train", info=dataset_info("camvid", ignore_index=254))
    assert camvid[0][1].tolist() == [[0, 5, 254], [254, 10, 1]]
    assert camvid.load(0)[1].dtype == np.uint8

    voc = dataset_info("voc", ignore_index=254)
    assert map_label(np.array([[0, 20, 255]], np.uint8), voc, tmp_path).tolist() == [[0, 20, 254]]
    kitti = dataset_info("kitti_road", ignore_index=300)  # beyond uint8: labels widen to int32
    rgb = np.array([[[255, 0, 255], [255, 0, 0], [0, 0, 0]]], np.uint8)
    assert map_label(rgb, kitti, tmp_path).tolist() == [[1, 0, 300]]
    assert dataset_info("camvid").ignore_index == 255  # the default keeps the release's mapping
    with pytest.raises(DataError, match="ignore index 3 is a class of camvid"):
        dataset_info("camvid", ignore_index=3)
    with pytest.raises(DataError, match="negative"):
        dataset_info("folder", 3, ignore_index=-1)


def test_a_failed_run_leaves_failed_txt_and_a_new_run_removes_it(data: Path, tmp_path: Path, monkeypatch,
                                                                 tiny_run_config) -> None:
    """A folder with FAILED.txt holds no finished run: it says why and how to go on; the next run removes it."""
    out = tmp_path / "failed"
    with pytest.raises(DataError, match="one step needs 16"):  # while setting up, after the folder was made
        train(tiny_run_config(data, out, "train.batch_size=16"), progress=False)
    assert not out.exists()  # the folder this run made is gone: nothing that looks like a run
    out.mkdir()  # a folder that was there before the run is kept, and marked
    with pytest.raises(DataError, match="one step needs 16"):
        train(tiny_run_config(data, out, "train.batch_size=16"), progress=False)
    text = (out / "FAILED.txt").read_text(encoding="utf-8")
    assert "DataError" in text and "while setting up" in text and "no checkpoint was written" in text
    trainer = Trainer(tiny_run_config(data, out, "train.ckpt_every=1", "train.iters=3"), progress=False)
    step = trainer._step

    def fail_second(*args):
        if trainer.iteration == 1:
            raise TrainingError("boom")
        step(*args)

    trainer._step = fail_second
    with pytest.raises(TrainingError, match="boom"):
        trainer.fit()
    text = (out / "FAILED.txt").read_text(encoding="utf-8")
    assert "TrainingError: boom" in text and "iteration 1" in text and f"--resume {out / 'last.pt'}" in text
    res = train(tiny_run_config(data, out, "train.iters=3"), resume=out / "last.pt", progress=False)
    assert res.iterations == 3 and not (out / "FAILED.txt").exists()


def test_without_a_progress_bar_the_loss_is_logged(data: Path, tmp_path: Path, caplog, tiny_run_config) -> None:
    """--no-progress (logs to a file, CI): every train.log_every iterations a log line carries the loss."""
    with caplog.at_level("INFO", logger="pspnet.train"):
        train(tiny_run_config(data, tmp_path / "quiet"), progress=False)
    lines = [r.getMessage() for r in caplog.records if "loss" in r.getMessage()]
    assert len(lines) == 2 and lines[0].startswith("iter 1/2: loss ") and lines[1].startswith("iter 2/2: loss ")
