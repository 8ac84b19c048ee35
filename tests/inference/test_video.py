"""``pspnet predict`` on videos (:mod:`pspnet.inference.video`): every frame in gives every frame out,
at the input's size and frame rate; label PNGs of every N-th frame equal the frames' own
predictions; a truncated, unreadable or interrupted video leaves no output that looks finished."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from pspnet.cli import main
from pspnet.errors import DataError
from pspnet.inference import video as video_module
from pspnet.inference.predict import OVERLAY_ALPHA
from pspnet.inference.testtime import predict_logits
from pspnet.inference.video import VideoSource, predict_videos, split_video_inputs

NAMES = ["sky", "road", "car"]
PALETTE = np.array([(10, 20, 30), (200, 0, 0), (0, 200, 100)], np.uint8)
H, W, FRAMES, FPS = 48, 64, 12, 10.0


@pytest.fixture(scope="module")
def tiny(varied_tiny_weights, tmp_path_factory):
    """(model, weight file): a tiny PSPNet-18 whose predictions vary over the frame."""
    return varied_tiny_weights(tmp_path_factory.mktemp("w"), NAMES, PALETTE.tolist())


def _write_video(path: Path, fourcc: str, frames: int = FRAMES) -> Path:
    """Smooth moving gradients (a lossy codec keeps them well), one frame distinct from the next."""
    yy, xx = np.mgrid[0:H, 0:W]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), FPS, (W, H))
    assert writer.isOpened()
    for i in range(frames):
        writer.write(np.stack([(xx * 4 + i * 10) % 256, (yy * 5 + i * 3) % 256,
                               np.full_like(xx, 60 + i * 12)], -1).astype(np.uint8))
    writer.release()
    return path


def _read_video(path: Path) -> tuple[list[np.ndarray], float]:
    """All frames (RGB) and the frame rate, as OpenCV decodes them."""
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), path
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return frames, fps


def _predict(model, frame: np.ndarray) -> np.ndarray:
    """One frame's label map, predicted on its own (fp32, the default test settings)."""
    x = torch.from_numpy(np.ascontiguousarray(frame.transpose(2, 0, 1)))[None]
    return predict_logits(model, x)[0].argmax(0).numpy()


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_split_video_inputs():
    videos, others = split_video_inputs(["0", "a.png", "clip.MP4", "dir", "b.avi", "*.jpg"])
    assert videos == [0, "clip.MP4", "b.avi"] and others == ["a.png", "dir", "*.jpg"]


def test_twelve_frames_in_twelve_frames_out_same_size_and_rate(tmp_path, tiny):
    model, weights = tiny
    clip = _write_video(tmp_path / "clip.mp4", "mp4v")
    out = tmp_path / "out"
    rc = main(["predict", str(clip), "--weights", str(weights), "--out", str(out), "--video-color",
               "--precision", "fp32", "--batch-size", "5", "--no-progress"])  # 5 + 5 + 2: a short last batch
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["clip_color.mp4", "clip_overlay.mp4", "legend.png"]
    inputs, _ = _read_video(clip)
    for name in ("clip_overlay.mp4", "clip_color.mp4"):
        frames, fps = _read_video(out / name)
        assert len(frames) == FRAMES and fps == FPS, name
        assert all(f.shape == (H, W, 3) for f in frames), name
    # the overlay is each frame blended with its own prediction's colours (up to the codec's loss),
    # far from the plain frames and from another frame's overlay
    overlays, _ = _read_video(out / "clip_overlay.mp4")
    colours, _ = _read_video(out / "clip_color.mp4")
    for k in (0, 5, 11):
        label = _predict(model, inputs[k])
        expected = inputs[k] * (1 - OVERLAY_ALPHA) + PALETTE[label] * OVERLAY_ALPHA
        err = np.abs(overlays[k].astype(float) - expected).mean()  # measured 3.9-5.4 of 255
        assert err < 8, (k, err)
        assert np.abs(overlays[k].astype(float) - inputs[k]).mean() > 4 * err  # measured 46-66
        assert np.abs(overlays[(k + 6) % FRAMES].astype(float) - expected).mean() > 4 * err  # measured 31-36
        # the colour video's nearest palette colour is the class, but at class edges (4:2:0 chroma)
        nearest = np.abs(colours[k][:, :, None].astype(int) - PALETTE.astype(int)).sum(-1).argmin(-1)
        assert (nearest == label).mean() > 0.93  # measured 0.965-0.99; another frame's labels: 0.78-0.84


def test_every_third_frame_gives_four_label_pngs_equal_to_the_frames_predictions(tmp_path, tiny):
    model, weights = tiny
    clip = _write_video(tmp_path / "clip.avi", "MJPG")
    out = tmp_path / "out"
    rc = main(["predict", str(clip), "--weights", str(weights), "--out", str(out), "--every", "3",
               "--precision", "fp32", "--batch-size", "5", "--no-progress"])
    assert rc == 0
    pngs = sorted((out / "clip_labels").iterdir())
    assert [p.name for p in pngs] == ["000000.png", "000003.png", "000006.png", "000009.png"]
    assert len(_read_video(out / "clip_overlay.mp4")[0]) == FRAMES  # the video keeps every frame
    inputs, _ = _read_video(clip)
    for p in pngs:
        label = Image.open(p)
        assert label.mode == "L" and label.size == (W, H)
        # batched prediction equals the frame's own: batching changes rounding at most
        same = np.asarray(label) == _predict(model, inputs[int(p.stem)])
        assert same.mean() > 0.999, (p.name, same.mean())
    assert _hidden(out) == []


def test_auto_weighs_its_setup_against_the_passes_the_video_headers_announce(tmp_path, tiny, monkeypatch):
    # A 40-frame clip chose int8 (44 s of calibration) over bf16 (4 s in all) while auto did not know
    # the job's size; now it gets the forward passes: 12 + 7 frames at 5 a pass = 3 + 2, an
    # unreadable file none; flip under logit-average doubles them; a camera has no end.
    model, _ = tiny
    seen = []
    real = video_module.prepare_model
    monkeypatch.setattr(video_module, "prepare_model", lambda *a, **k: seen.append(
        (k.get("expected_calls"), torch.is_grad_enabled())) or real(*a, **k))
    clips = [_write_video(tmp_path / "a.avi", "MJPG"), _write_video(tmp_path / "b.avi", "MJPG", frames=7)]
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    common = dict(class_names=NAMES, palette=PALETTE.tolist(), precision="fp32", batch_size=5, progress=False)
    out = predict_videos(model, [*clips, broken], tmp_path / "out", **common)
    assert [name for name, _ in out.failed] == [str(broken)]
    predict_videos(model, clips, tmp_path / "out2", flip=True, protocol="logit-average", **common)
    assert seen == [(5, False), (10, False)]  # and no autograd graph is kept for the frames
    assert video_module._batches_in([clips[0], 0], 5) is None  # camera 0: never opened, no end


@pytest.mark.parametrize("fourcc, ext, problem", [
    ("mp4v", ".mp4", "cannot be opened as a video"),  # the index (moov atom) is at the end: nothing opens
    ("MJPG", ".avi", r"decoded \d+ of the 12 frames its header announces"),  # the frames end early
])
def test_truncated_video_is_refused_and_leaves_no_finished_output(tmp_path, tiny, fourcc, ext, problem, capsys):
    _, weights = tiny
    whole = _write_video(tmp_path / f"whole{ext}", fourcc).read_bytes()
    cut = tmp_path / f"cut{ext}"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=problem) as e, closing(VideoSource(cut)) as video:
        for _ in video.batches(4):
            pass
    assert str(cut) in str(e.value)
    out = tmp_path / "out"
    rc = main(["predict", str(cut), "--weights", str(weights), "--out", str(out), "--frame-labels",
               "--video-color", "--precision", "fp32", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and f"failed: {cut}: " in err and "1 input(s) failed" in err
    assert sorted(p.name for p in out.iterdir()) == ["legend.png"]  # no video, no frames, no partial files


def test_interrupted_video_leaves_no_finished_output_and_stale_parts_are_removed(tmp_path, tiny, monkeypatch):
    model, _ = tiny
    clip = _write_video(tmp_path / "clip.mp4", "mp4v")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".clip_overlay.mp4.dead.partial.mp4").write_bytes(b"left by a killed run")
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return predict_logits(*args, **kwargs)

    monkeypatch.setattr(video_module, "predict_logits", interrupted)
    with pytest.raises(KeyboardInterrupt):
        predict_videos(model, [clip], out, class_names=NAMES, palette=PALETTE, color=True, frame_labels=True,
                       progress=False)
    assert len(calls) == 2 and list(out.iterdir()) == []
    monkeypatch.undo()
    written = predict_videos(model, [clip, tmp_path / "missing.mp4", 9], out, class_names=NAMES, palette=PALETTE,
                             progress=False)
    assert [p.name for p in written] == ["clip_overlay.mp4", "legend.png"]
    assert written.failed == [(str(tmp_path / "missing.mp4"), "file not found"),
                              ("camera 9", "could not be opened (no such device, or it is in use)")]
    assert _hidden(out) == []


def test_video_frames_are_planned_within_the_memory_budget(tmp_path, tiny, caplog):
    """A video's frames get the memory plan an image gets: over the budget whole, sliding windows (said);
    over it even so, the video is reported as failed and the run goes on with the next."""
    from pspnet.inference.budget import image_bytes, model_bytes
    model, _ = tiny
    fixed = model_bytes(model.config)
    settings = {"base_size": None, "scales": (1.0,), "mode": "whole", "crop_size": None, "stride_rate": 2 / 3}
    whole = image_bytes(model.config, 2000, 2000, base_size=None, scales=(1.0,), mode="whole", crop_size=None,
                        precision="fp32")
    with caplog.at_level("WARNING"):
        planned = video_module._frame_plan(model.config, 2000, 2000, 2, fixed + whole, "fp32", settings, "big.mp4")
    assert planned["mode"] == "sliding" and "sliding windows" in caplog.text  # two frames a batch: half each
    assert video_module._frame_plan(model.config, 2000, 2000, 1, fixed + whole, "fp32", settings, "b")["mode"] \
        == "whole"
    clip = _write_video(tmp_path / "clip.mp4", "mp4v", frames=2)
    other = _write_video(tmp_path / "other.mp4", "mp4v", frames=2)
    out = predict_videos(model, [clip, other], tmp_path / "o", class_names=NAMES, palette=PALETTE, batch_size=1,
                         progress=False, max_memory=fixed + 1000)
    assert [str(s) for s, _ in out.failed] == [str(clip), str(other)]
    assert "even in sliding windows" in out.failed[0][1]
    assert not (tmp_path / "o" / "clip_overlay.mp4").exists()
