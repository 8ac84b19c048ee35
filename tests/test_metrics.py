"""ConfusionMatrix against an independent implementation (torchmetrics) and hand-computed values."""

import math

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from pspnet.metrics import ConfusionMatrix

IGNORE = 255


def _tm(pred, target, n, ignore=IGNORE):
    """torchmetrics reference: per-class IoU (0 where undefined), macro mIoU (skips classes absent
    from both), micro pixel accuracy, per-class recall (0 where undefined)."""
    kw = dict(num_classes=n, ignore_index=ignore)
    p, t = pred.reshape(-1).long(), target.reshape(-1).long()
    return {"iou": MulticlassJaccardIndex(average="none", **kw)(p, t).double(),
            "miou": float(MulticlassJaccardIndex(average="macro", **kw)(p, t)),
            "all_acc": float(MulticlassAccuracy(average="micro", **kw)(p, t)),
            "acc": MulticlassAccuracy(average="none", **kw)(p, t).double()}


def _support(target, n, ignore=IGNORE):
    t = np.asarray(target).reshape(-1).astype(np.int64)
    t = t[(t != ignore) & (t >= 0) & (t < n)]
    return np.bincount(t, minlength=n)[:n]


def _blocky_maps(seed, n=8, h=96, w=128):
    """Realistic-looking maps: nearest-upsampled random regions, ignore rectangles, class 3 absent from
    the ground truth but predicted, class 5 absent everywhere; prediction = shifted GT + noisy blocks."""
    rng = np.random.default_rng(seed)
    present = [c for c in range(n) if c not in (3, 5)]
    coarse = rng.choice(present, size=(h // 16, w // 16))
    gt = np.kron(coarse, np.ones((16, 16), dtype=np.int64))
    for _ in range(3):
        y, x = rng.integers(0, h - 20), rng.integers(0, w - 20)
        gt[y:y + rng.integers(4, 20), x:x + rng.integers(4, 20)] = IGNORE
    pred = np.roll(np.where(gt == IGNORE, 0, gt), shift=(3, -5), axis=(0, 1))  # boundary errors
    for _ in range(6):
        y, x = rng.integers(0, h - 12), rng.integers(0, w - 12)
        pred[y:y + 12, x:x + 12] = rng.choice([c for c in range(n) if c != 5])
    pred[:4, :4] = 3  # class 3 predicted, never in the ground truth
    return torch.from_numpy(pred), torch.from_numpy(gt)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
def test_random_maps_agree_with_torchmetrics(dtype):
    g = torch.Generator().manual_seed(0)
    n = 7
    target = torch.randint(0, n, (2, 37, 53), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.1] = IGNORE
    pred = torch.randint(0, n, (2, 37, 53), generator=g)
    cm = ConfusionMatrix(n, IGNORE)
    cm.update(pred, target.to(dtype))
    m = cm.compute()
    ref = _tm(pred, target, n)
    np.testing.assert_allclose(m.iou, ref["iou"].numpy(), atol=1e-6)
    np.testing.assert_allclose(m.acc, ref["acc"].numpy(), atol=1e-6)
    assert m.miou == pytest.approx(ref["miou"], abs=1e-6)
    assert m.macc == pytest.approx(float(ref["acc"].mean()), abs=1e-6)
    assert m.all_acc == pytest.approx(ref["all_acc"], abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_blocky_maps_with_ignore_and_absent_classes(seed):
    n = 8
    pred, gt = _blocky_maps(seed, n)
    cm = ConfusionMatrix(n, IGNORE)
    for i in range(0, gt.shape[0], 32):  # accumulate over horizontal strips
        cm.update(pred[i:i + 32], gt[i:i + 32].to(torch.uint8))
    ref = _tm(pred, gt, n)
    support = _support(gt, n)
    assert support[3] == 0 and support[5] == 0 and (pred == 3).any() and not (pred == 5).any()

    nan = cm.compute("nan")
    assert math.isnan(nan.iou[5]) and math.isnan(nan.acc[5]) and math.isnan(nan.acc[3])
    assert nan.iou[3] == 0.0  # predicted but absent from the ground truth: counts as 0
    defined = [c for c in range(n) if c != 5]
    np.testing.assert_allclose(np.array(nan.iou)[defined], ref["iou"].numpy()[defined], atol=1e-6)
    assert nan.miou == pytest.approx(ref["miou"], abs=1e-6)  # torchmetrics macro skips absent-everywhere
    has_gt = support > 0
    np.testing.assert_allclose(np.array(nan.acc)[has_gt], ref["acc"].numpy()[has_gt], atol=1e-6)
    assert nan.macc == pytest.approx(float(ref["acc"][torch.from_numpy(has_gt)].mean()), abs=1e-6)
    assert nan.all_acc == pytest.approx(ref["all_acc"], abs=1e-6)

    zero = cm.compute("zero")  # original release: undefined -> 0, mean over all classes
    np.testing.assert_allclose(zero.iou, ref["iou"].numpy(), atol=1e-6)
    assert zero.miou == pytest.approx(float(ref["iou"].mean()), abs=1e-6)
    assert zero.macc == pytest.approx(float(ref["acc"].mean()), abs=1e-6)
    assert zero.miou < nan.miou  # the absent class pulls the original-release mean down
    assert zero.all_acc == pytest.approx(nan.all_acc)


def test_hand_computed_example():
    #   gt    pred
    #  0 0 1  0 1 1
    #  1 2 X  1 1 0     (X = ignore; class 3 absent everywhere)
    gt = torch.tensor([[0, 0, 1], [1, 2, IGNORE]])
    pred = torch.tensor([[0, 1, 1], [1, 1, 0]])
    cm = ConfusionMatrix(4, IGNORE)
    cm.update(pred, gt)
    assert cm.matrix.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    m = cm.compute()
    assert m.iou[:3] == pytest.approx([1 / 2, 2 / 4, 0.0]) and math.isnan(m.iou[3])
    assert m.acc[:3] == pytest.approx([1 / 2, 1.0, 0.0]) and math.isnan(m.acc[3])
    assert m.miou == pytest.approx(1 / 3) and m.macc == pytest.approx(1 / 2) and m.all_acc == pytest.approx(3 / 5)
    z = cm.compute("zero")
    assert z.miou == pytest.approx(1 / 4) and z.macc == pytest.approx(1.5 / 4)


def test_ignore_index_inside_class_range_and_invalid_targets():
    g = torch.Generator().manual_seed(3)
    n = 5
    target = torch.randint(-1, n + 2, (40, 40), generator=g)  # -1, n, n+1 are invalid -> skipped
    pred = torch.randint(0, n, (40, 40), generator=g)
    cm = ConfusionMatrix(n, ignore_index=0)
    cm.update(pred, target)
    keep = (target > 0) & (target < n)
    ref = np.zeros((n, n), dtype=np.int64)
    np.add.at(ref, (target[keep].numpy(), pred[keep].numpy()), 1)
    assert cm.matrix.numpy().tolist() == ref.tolist()
    assert cm.matrix[0].sum() == 0


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32, torch.int64])
def test_chunked_update_matches_a_reference_across_chunks_and_sizes(monkeypatch, dtype):
    # a chunk far smaller than the maps, so every update crosses several chunk boundaries and
    # the reused buffer meets maps of different sizes (a short tail chunk included)
    monkeypatch.setattr(ConfusionMatrix, "_CPU_CHUNK", 1000)
    g = torch.Generator().manual_seed(5)
    n = 7
    cm = ConfusionMatrix(n, ignore_index=255)
    ref = np.zeros((n, n), dtype=np.int64)
    for shape in [(61, 67), (3, 5), (40, 151)]:
        low = 0 if dtype == torch.uint8 else -3
        target = torch.randint(low, n + 3, shape, generator=g)
        target[torch.rand(shape, generator=g) < 0.1] = 255
        pred = torch.randint(0, n, shape, generator=g)
        cm.update(pred.to(torch.int32), target.to(dtype))
        keep = (target >= 0) & (target < n)
        np.add.at(ref, (target[keep].numpy(), pred[keep].numpy()), 1)
        assert cm.matrix.numpy().tolist() == ref.tolist()


def test_logits_are_argmaxed_and_updates_accumulate():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 6, 20, 30, generator=g)
    target = torch.randint(0, 6, (3, 20, 30), generator=g)
    a, b, c = ConfusionMatrix(6), ConfusionMatrix(6), ConfusionMatrix(6)
    a.update(logits, target)
    for i in range(3):
        b.update(logits[i:i + 1].argmax(1), target[i:i + 1])
    c.update(logits[:1], target[:1])
    c2 = ConfusionMatrix(6)
    c2.update(logits[1:], target[1:])
    c.merge(c2)
    assert torch.equal(a.matrix, b.matrix) and torch.equal(a.matrix, c.matrix)
    assert int(a.matrix.sum()) == 3 * 20 * 30


def test_bad_inputs_are_rejected_with_the_values():
    cm = ConfusionMatrix(4)
    with pytest.raises(ValueError, match=r"\[0, 3\].*\[0, 7\]"):
        cm.update(torch.tensor([0, 7]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="absent"):
        cm.compute("skip")


def test_as_dict_json_safe():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    d = cm.compute().as_dict(["a", "b", "c"], json_safe=True)
    assert d["per_class"][2] == {"name": "c", "iou": None, "acc": None}
    assert d["mIoU"] == 1.0 and d["allAcc"] == 1.0


def _camvid_root():
    import os
    from pathlib import Path
    root = Path(os.environ.get("PSPNET_CAMVID_ROOT", Path(__file__).resolve().parents[2] / "shared/data/camvid"))
    return root if (root / "val.txt").is_file() else None


@pytest.mark.skipif(_camvid_root() is None, reason="CamVid not found (set PSPNET_CAMVID_ROOT)")
def test_real_camvid_label_maps_agree_with_torchmetrics():
    """Real label maps: CamVid val frames scored against the frame 10 positions later as 'prediction'
    (realistic disagreement at object boundaries and moving objects), ignore = void."""
    from pspnet.data.datasets import build_dataset
    ds = build_dataset("camvid", _camvid_root(), "val")
    labels = [ds.load(i)[1] for i in range(0, 40, 2)]
    n = ds.info.num_classes
    cm = ConfusionMatrix(n, IGNORE)
    preds, targets = [], []
    for a, b in zip(labels[:10], labels[10:]):
        pred = torch.from_numpy(np.where(b == IGNORE, 0, b).astype(np.int64))
        cm.update(pred, torch.from_numpy(a))
        preds.append(pred)
        targets.append(torch.from_numpy(a).long())
    ref = _tm(torch.cat(preds), torch.cat(targets), n)
    m = cm.compute()
    support = _support(torch.cat(targets), n)
    defined = ~np.isnan(np.array(m.iou))
    np.testing.assert_allclose(np.array(m.iou)[defined], ref["iou"].numpy()[defined], atol=1e-6)
    assert m.miou == pytest.approx(ref["miou"], abs=1e-6)
    np.testing.assert_allclose(np.array(m.acc)[support > 0], ref["acc"].numpy()[support > 0], atol=1e-6)
    assert m.all_acc == pytest.approx(ref["all_acc"], abs=1e-6)
    assert 0.2 < m.miou < 0.95  # a realistic, imperfect agreement (not a trivial identity)
