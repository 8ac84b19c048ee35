"""The checkpoint catalogue is data, ``src/pspnet/hub/catalogue.json``, checked against one schema
(:mod:`pspnet.hub.schema`) when it is read (issue 42).

Adding a checkpoint is an edit of that file and a run of ``tests/hub``: every shipped entry must pass
the schema, and a broken entry is refused with the file, the entry's name and the field. The same
schema checks a local catalogue (``$PSPNET_CATALOGUE``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlparse

import pytest

from pspnet.errors import ConfigError
from pspnet.hub import catalogue as cat
from pspnet.hub.commands import SOURCE_KEYS
from pspnet.hub.schema import validate_entry

ROOT = Path(__file__).resolve().parents[2]


def shipped() -> dict:
    return json.loads(cat.CATALOGUE_FILE.read_text(encoding="utf-8"))


def test_the_shipped_file_is_package_data_and_every_entry_passes_the_schema():
    assert cat.CATALOGUE_FILE.parent == Path(cat.__file__).resolve().parent
    assert '"hub/catalogue.json"' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")  # in the wheel
    data = shipped()
    sources, entries = cat.read_catalogue_file(cat.CATALOGUE_FILE)
    assert entries == cat.CATALOGUE and sources == cat.SOURCES
    assert len(entries) == len(data["models"]) == len({e.name for e in entries})
    assert set(SOURCE_KEYS) == set(sources)  # the CLI's list of zoos (not read from the file: no torch there)
    assert all(any(e.source == s for e in entries) for s in sources)
    for d in data["models"]:
        assert validate_entry(d, sources, "catalogue.json").name == d["name"]
    for e in entries:  # what the schema enforces, seen on what was loaded
        assert all(urlparse(f.url).scheme in ("http", "https") and f.filename for f in e.files), e.name
        if sources[e.source].requires_checksum:
            assert all(f.sha256 or f.sha256_prefix for f in e.files), e.name


def test_models_json_output_is_a_valid_catalogue_entry_for_entry():
    """``pspnet models --json`` writes every field: its items read back as the same entries."""
    for e in cat.CATALOGUE:
        assert cat.ModelEntry.from_dict(json.loads(json.dumps(e.to_dict()))) == e


def _set_file(key: str, value):
    return lambda d: d["files"][0].update({key: value})


BROKEN = [  # (what, change to an mmsegmentation entry, what the error says besides the entry's name)
    ("no checksum", lambda d: d["files"][0].pop("sha256_prefix"),
     r"field files\[0\]: mmsegmentation publishes a checksum .*; give sha256 or sha256_prefix"),
    ("ftp URL", lambda d: d["files"][0].update(url=d["files"][0]["url"].replace("https://", "ftp://")),
     r"field files\[0\]\.url: must be an http:// or https:// URL"),
    ("file URL", _set_file("url", "file:///etc/passwd"), r"field files\[0\]\.url: must be an http"),
    ("short sha256", _set_file("sha256", "abc123"), r"field files\[0\]\.sha256: must be 64 hex digits"),
    ("prefix not in the file name", _set_file("sha256_prefix", "0badc0de"),
     r"field files\[0\]: sha256_prefix 0badc0de is not the [0-9a-f]{8} the file name ends in"),
    ("no dataset", lambda d: d.pop("dataset"), r"field dataset: required field missing"),
    ("misspelt key", lambda d: d.update(sha265="0" * 64), r"field sha265: unknown field"),
    ("unknown source", lambda d: d.update(source="mmseg"), r"field source: unknown source 'mmseg'"),
    ("mIoU not a number", lambda d: d["results"][0].update(miou="high"), r"field results\[0\]\.miou"),
    ("mIoU negative", lambda d: d["results"][0].update(miou=-0.5), r"field results\[0\]\.miou"),
    ("a path as name", lambda d: d.update(name="../x"), r"field name: String should match pattern"),
    ("url and files disagree", lambda d: d.update(url="https://download.openmmlab.com/x-00000000.pth"),
     r"field files: give files or url/.*, not both: url differs from files\[0\]"),
]


@pytest.mark.parametrize("change, message", [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_a_broken_entry_is_refused_naming_the_entry_and_the_field(change, message, tmp_path, monkeypatch):
    data = shipped()
    i = next(i for i, d in enumerate(data["models"]) if d["source"] == "mmsegmentation")
    path = tmp_path / "catalogue.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    assert cat.read_catalogue_file(path)[1] == cat.CATALOGUE  # the unbroken copy reads
    change(data["models"][i])
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ConfigError, match=message) as err:
        cat.read_catalogue_file(path)
    assert f"{path}: entry {data['models'][i]['name']!r}, field " in str(err.value)
    # one schema: a local catalogue ($PSPNET_CATALOGUE) with the same entry is refused the same way
    local = tmp_path / "local.json"
    local.write_text(json.dumps([data["models"][i]]), encoding="utf-8")
    monkeypatch.setenv(cat.CATALOGUE_ENV, str(local))
    with pytest.raises(ConfigError, match=message):
        cat.catalogue()


def test_a_duplicate_name_an_unknown_source_field_or_another_shape_is_refused(tmp_path):
    path = tmp_path / "catalogue.json"
    data = shipped()
    data["models"].append(dict(data["models"][0]))
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(f"entry {data['models'][0]['name']!r}, field name: listed twice")):
        cat.read_catalogue_file(path)
    data = shipped()
    data["sources"][0]["host"] = ""
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"source 'mmsegmentation', field host"):
        cat.read_catalogue_file(path)
    path.write_text(json.dumps(shipped()["models"]), encoding="utf-8")  # a bare list: that is $PSPNET_CATALOGUE's
    with pytest.raises(ConfigError, match="expected a JSON object with keys format"):
        cat.read_catalogue_file(path)
    path.write_text("{", encoding="utf-8")
    with pytest.raises(ConfigError, match="cannot read the catalogue file"):
        cat.read_catalogue_file(path)


def test_mmsegmentation_protocols_in_the_data_are_the_ones_convert_records():
    """The protocol texts were generated from the converter's tables; a new entry must agree with them
    (``pspnet eval --weights NAME`` follows what the converted file records, not the text)."""
    from pspnet.models.zoo import MMSEG_SLIDE, MMSEG_TEST_SCALE
    for e in cat.CATALOGUE:
        if e.source != "mmsegmentation":
            continue
        big = e.crop_size == (769, 769)  # the 769x769 Cityscapes models slide at (2049, 1025)
        scale = (2049, 1025) if big else MMSEG_TEST_SCALE[e.zoo_dataset]
        slide = ((769, 769), (513, 513)) if big else MMSEG_SLIDE.get(e.zoo_dataset)
        how = (f"sliding {slide[0][0]}x{slide[0][1]} windows, stride {slide[1][0]}" if slide else "whole image")
        for r in e.results:
            assert r.protocol.endswith(f"{how}, Resize(scale={scale}, keep_ratio=True)"), (e.name, r.protocol)
