"""Training curves: what a reader of ``curves.png`` sees."""
from pathlib import Path

from PIL import Image

from pspnet.plots import plot_training_curves

TRAIN = [{"kind": "train", "iter": i, "loss": 2.0 / i, "loss_main": 1.5 / i, "loss_aux": 1.2 / i} for i in (1, 2, 3)]


def test_a_run_without_validation_gets_the_loss_panel_alone(tmp_path: Path) -> None:
    """A train+val run has no val records: an empty validation panel would read like a failed one."""
    val = [{"kind": "val", "iter": 3, "mIoU": 0.4, "allAcc": 0.8}]
    with_val = Image.open(plot_training_curves(TRAIN + val, tmp_path / "with_val.png")).size
    without = Image.open(plot_training_curves(TRAIN, tmp_path / "without.png")).size
    assert with_val[1] == without[1]
    assert without[0] < 0.6 * with_val[0]  # one panel, not two
