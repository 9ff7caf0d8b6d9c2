"""tokenizers_mm.io: atomic files and the rules of output folders, below the CLI (tests/test_bad_inputs.py drives
them through every command)."""

import json
import os

import pytest
from PIL import Image

from tokenizers_mm import io as tio


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = str(tmp_path / "report.json")
    tio.write_json_atomic(path, {"a": 1})

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        tio.write_json_atomic(path, {"a": 2})
    assert json.load(open(path)) == {"a": 1} and os.listdir(tmp_path) == ["report.json"]


def test_atomic_path_hands_writers_a_temporary_of_the_same_format(tmp_path):
    path = str(tmp_path / "grid.png")
    with tio.atomic_path(path) as tmp:
        assert tmp.endswith(".png") and tmp != path
        Image.new("RGB", (4, 4), (255, 0, 0)).save(tmp)  # PIL picks the format from the extension
        assert not os.path.exists(path)
    assert Image.open(path).getpixel((0, 0)) == (255, 0, 0)
    with pytest.raises(RuntimeError), tio.atomic_path(path) as tmp:
        Image.new("RGB", (4, 4)).save(tmp)
        raise RuntimeError("interrupted")
    assert Image.open(path).getpixel((0, 0)) == (255, 0, 0) and os.listdir(tmp_path) == ["grid.png"]


def test_output_folder_swaps_in_whole_and_names_what_differs(tmp_path):
    out = str(tmp_path / "out")
    made = {"command": "demo", "modality": "image", "settings": {"size": 1}}
    f = tio.OutputFolder(out, made).check()
    tio.write_text_atomic(os.path.join(f.path, "a.txt"), "1")
    assert not os.path.exists(out)
    f.commit()
    assert sorted(os.listdir(out)) == ["a.txt", "made_by.json"]
    assert json.load(open(os.path.join(out, "made_by.json")))["files"] == ["a.txt"]
    with pytest.raises(tio.OutputError, match=r"settings.size was 1, now 2"):
        tio.OutputFolder(out, {**made, "settings": {"size": 2}}).check()
    with pytest.raises(tio.OutputError, match="holds the output of `tokenizers-mm demo`, not of `other`"):
        tio.OutputFolder(out, {**made, "command": "other"}).check()
    again = tio.OutputFolder(out, made).check()  # its own earlier output: replaced whole
    tio.write_text_atomic(os.path.join(again.path, "b.txt"), "2")
    again.commit()
    assert sorted(os.listdir(out)) == ["b.txt", "made_by.json"]
    assert not [n for n in os.listdir(tmp_path) if n != "out"]
