import os

import pytest

from tokenizers_mm.data.urls import expand_urls, is_remote


def _touch(path):
    with open(path, "wb"):
        pass


def test_brace_dir_glob_and_list(tmp_path):
    for i in range(3):
        _touch(tmp_path / f"train-{i:06d}.tar")
    _touch(tmp_path / "val-000000.tar")
    brace = expand_urls(str(tmp_path / "train-{000000..000002}.tar"))
    assert [os.path.basename(u) for u in brace] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert expand_urls(str(tmp_path), split="train") == brace
    assert [os.path.basename(u) for u in expand_urls(str(tmp_path), split="val")] == ["val-000000.tar"]
    assert len(expand_urls(str(tmp_path))) == 4
    assert expand_urls(str(tmp_path / "train-*.tar")) == brace
    lst = tmp_path / "list.txt"
    lst.write_text("# shards\n" + "\n".join(brace[:2]) + "\n")
    assert expand_urls("@" + str(lst)) == brace[:2]
    assert expand_urls([brace[0], brace[2]]) == [brace[0], brace[2]]
    assert expand_urls(f"{brace[0]}::{brace[1]}") == brace[:2]


def test_remote_urls_are_expanded_not_touched():
    urls = expand_urls("pipe:aws s3 cp s3://bucket/train-{000000..000003}.tar -")
    assert urls[0] == "pipe:aws s3 cp s3://bucket/train-000000.tar -" and len(urls) == 4
    assert all(is_remote(u) for u in urls)
    assert expand_urls("https://host/x-{0..1}.tar") == ["https://host/x-0.tar", "https://host/x-1.tar"]


def test_missing_inputs_name_the_spec(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        expand_urls(str(tmp_path / "nope-{0..2}.tar"))
    with pytest.raises(FileNotFoundError, match="no shards matching 'val-"):
        expand_urls(str(tmp_path), split="val")
    with pytest.raises(FileNotFoundError, match="shard list file"):
        expand_urls("@" + str(tmp_path / "missing.txt"))
