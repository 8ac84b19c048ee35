"""The shipped configs are package data: ``--config camvid/pspnet_r18_cpu`` (a name, ``.yaml``
optional) works from any folder, also after a plain (non-editable) install; a path still works;
``pspnet configs`` lists them. Every command takes the data folder as ``--data-root`` (``--root``: the
old spelling)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pspnet.cli import main
from pspnet.config import CONFIGS_DIR, load_config, resolve_config, shipped_configs
from pspnet.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_a_name_resolves_from_any_folder_with_or_without_yaml(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = CONFIGS_DIR / "camvid" / "pspnet_r18_cpu.yaml"
    assert resolve_config("camvid/pspnet_r18_cpu") == resolve_config("camvid/pspnet_r18_cpu.yaml") == shipped
    assert load_config("camvid/pspnet_r18_cpu") == load_config(shipped)
    assert load_config("camvid/pspnet_r18_cpu").data.crop_size == (192, 256)


def test_a_path_still_works_and_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "camvid").mkdir()
    (tmp_path / "camvid" / "pspnet_r18_cpu.yaml").write_text(yaml.safe_dump({"train": {"iters": 7}}))
    assert load_config("camvid/pspnet_r18_cpu.yaml").train.iters == 7  # the user's file, not the shipped one
    assert load_config(tmp_path / "camvid" / "pspnet_r18_cpu.yaml").train.iters == 7


def test_an_unknown_name_suggests_the_shipped_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"config file not found.*did you mean camvid/pspnet_r18_cpu.*pspnet configs"):
        load_config("configs/camvid/pspnet_r18_cpu.yaml")  # the old repository path


def test_pspnet_configs_lists_every_shipped_config_and_prints_one(capsys):
    assert main(["configs"]) == 0
    out = capsys.readouterr().out
    names = list(shipped_configs())
    assert len(names) == len(list(CONFIGS_DIR.rglob("*.yaml"))) >= 16
    for name in names:
        assert f"\n{name} " in "\n" + out, name
    line = next(ln for ln in out.splitlines() if ln.startswith("camvid/pspnet_r18_cpu "))
    assert line.split(None, 1)[1].startswith("PSPNet-18 on CamVid (11 classes)")  # with its first comment line
    assert main(["configs", "camvid/pspnet_r18_cpu"]) == 0
    assert capsys.readouterr().out == (CONFIGS_DIR / "camvid" / "pspnet_r18_cpu.yaml").read_text()


@pytest.mark.parametrize("flag", ["--data-root", "--root"])
def test_data_check_takes_the_data_folder_as_data_root_or_root(tmp_path, capsys, flag):
    missing = tmp_path / "no_such_folder"
    assert main(["data", "check", "--config", "camvid/pspnet_r18_cpu", flag, str(missing), "--no-progress"]) == 2
    assert str(missing) in capsys.readouterr().err


@pytest.mark.parametrize("command", [["train", "-c", "camvid/pspnet_r18_cpu"],
                                     ["eval", "-c", "camvid/pspnet_r18_cpu"]])
def test_train_and_eval_take_data_root(tmp_path, capsys, command):
    missing = tmp_path / "no_such_folder"
    assert main([*command, "--data-root", str(missing), "--no-progress"]) == 2
    assert str(missing) in capsys.readouterr().err  # the run looked there, not at the config's data.root


@pytest.mark.slow
def test_a_non_editable_install_resolves_a_named_config_from_another_folder(tmp_path):
    """``pip install --target`` (a built wheel, no link to this tree) of a copy of the project, then
    ``pspnet`` run from an unrelated folder with only that install on the path. Takes a few seconds:
    no dependencies, no build isolation, no index."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, project / name)
    shutil.copytree(REPO / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                    "--quiet", "--target", str(site), str(project)], check=True, timeout=50)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}

    def pspnet(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pspnet.cli", *args], cwd=elsewhere, env=env,
                              capture_output=True, text=True, timeout=60, check=False)

    code = ("import pspnet.config as c; print(c.resolve_config('camvid/pspnet_r18_cpu').resolve()); "
            "print(c.load_config('camvid/pspnet_r18_cpu').train.iters)")
    where = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True,
                           timeout=60, check=False)
    assert where.returncode == 0, where.stderr
    path, iters = where.stdout.split()
    assert Path(path) == (site / "pspnet" / "configs" / "camvid" / "pspnet_r18_cpu.yaml").resolve()  # not this tree
    assert int(iters) == load_config("camvid/pspnet_r18_cpu").train.iters
    listed = pspnet("configs")
    assert listed.returncode == 0 and "cityscapes/pspnet_r101" in listed.stdout, listed.stderr
    # the command: the config is found; what is missing now is the data (named by its folder)
    check = pspnet("data", "check", "--config", "camvid/pspnet_r18_cpu", "--data-root", "nodata", "--no-progress")
    assert check.returncode == 2 and "config file not found" not in check.stderr
    assert "nodata" in check.stderr, check.stderr
