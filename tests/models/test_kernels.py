"""The kernel loader (``pspnet.models.kernels``): the build flags name the library and reach the compiler."""

from __future__ import annotations

import logging
import shutil

import pytest

from pspnet.models import kernels

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler")


@pytest.fixture
def fresh_load(monkeypatch, tmp_path):
    """``kernels.load`` with an empty build cache in its own home; the loader's memo is cleared before and
    after, so no other test gets a library this test built."""
    monkeypatch.setenv("PSPNET_HOME", str(tmp_path))
    monkeypatch.delenv(kernels.FLAGS_ENV, raising=False)
    kernels.load.cache_clear()
    yield kernels.load
    kernels.load.cache_clear()


def test_extra_flags_build_another_library(fresh_load, monkeypatch, tmp_path):
    plain = fresh_load("max_pool")
    assert plain is not None
    monkeypatch.setenv(kernels.FLAGS_ENV, "-DPSPNET_EXTRA_FLAG_TEST=1")
    fresh_load.cache_clear()
    extra = fresh_load("max_pool")
    assert extra is not None and extra._name != plain._name  # a -march for another CPU never reuses ours
    assert len(list((tmp_path / "kernels").glob("max_pool-*.so"))) == 2


def test_flags_the_compiler_refuses_turn_the_kernel_off_with_the_reason(fresh_load, monkeypatch, caplog):
    monkeypatch.setenv(kernels.FLAGS_ENV, "-march=no-such-cpu")
    with caplog.at_level(logging.WARNING, logger=kernels.__name__):
        assert fresh_load("max_pool") is None
    assert "max_pool kernel off" in caplog.text and "no-such-cpu" in caplog.text
