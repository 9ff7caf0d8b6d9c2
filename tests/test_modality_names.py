"""One vocabulary: image / speech / shape everywhere users see it; the older audio / mesh still read where they were
stored (dataset.json, export config.json, tokens.npz, checkpoints) or typed (--modality, data.modality)."""

from __future__ import annotations

import json
import os
import shutil

import eval_parity
import pytest

from tokenizers_mm.cli import main
from tokenizers_mm.registry import canonical


def test_old_words_map_onto_the_registry_words():
    assert [canonical(m) for m in ("image", "audio", "mesh", "speech", "shape", "tokens")] == [
        "image", "speech", "shape", "speech", "shape", "tokens"]


def test_data_build_reads_the_old_flag_and_writes_the_new_word(tmp_path, capsys):
    from tokenizers_mm.data import ShardDataModule
    from tokenizers_mm.data.embedded import embedded_dir

    src = tmp_path / "clips"
    src.mkdir()
    for name in sorted(f for f in os.listdir(embedded_dir("speech")) if f.endswith(".flac"))[:4]:
        shutil.copy(os.path.join(embedded_dir("speech"), name), src / name)
    out = tmp_path / "shards"
    assert main(["data", "build", "--modality", "audio", "--src", str(src), "--out", str(out), "--val-fraction",
                 "0.5"]) == 0
    assert "samples of speech" in capsys.readouterr().out
    assert json.load(open(out / "dataset.json"))["modality"] == "speech"
    assert main(["data", "inspect", str(out), "--modality", "audio"]) == 0
    assert "modality: speech" in capsys.readouterr().out
    # a build of an older version, dataset.json saying "audio", still passes the modality check and loads
    manifest = json.load(open(out / "dataset.json"))
    manifest["modality"] = "audio"
    (out / "dataset.json").write_text(json.dumps(manifest))
    for word in ("audio", "speech"):
        dm = ShardDataModule(modality=word, train_urls=str(out), val_urls=str(out), batch_size=2, num_workers=0,
                             audio={"sample_rate": 16000, "seconds": 0.5})
        assert dm.modality == "speech"
        dm.setup("fit")
        assert next(iter(dm.train_dataloader()))["audio"].shape == (2, 1, 8000)
    with pytest.raises(ValueError, match="data.modality must be one of"):
        ShardDataModule(modality="video")


def test_exports_written_with_the_old_word_still_load(tmp_path):
    import pipelines
    from pipelines.files import check_meta
    from tokenizers_mm.export import export_checkpoint

    ckpt = eval_parity.write_checkpoint("speech", str(tmp_path / "speech.ckpt"))
    out = tmp_path / "export"
    cfg = export_checkpoint(ckpt, str(out))
    assert cfg["modality"] == "speech" and "# speech tokenizer" in open(out / "README.md").read()
    config = json.load(open(out / "config.json"))
    config["modality"] = "audio"  # as an export of an older version says
    (out / "config.json").write_text(json.dumps(config))
    for asked in (None, "audio", "speech"):
        tok = pipelines.load(str(out), device="cpu", modality=asked)
        assert tok.modality == "speech" and type(tok).__name__ == "SpeechPipeline"
    with pytest.raises(ValueError, match="expected a shape tokenizer"):
        pipelines.load(str(out), device="cpu", modality="mesh")
    assert check_meta({"modality": "audio", "codebook_size": tok.codebook_size}, tok, "old.npz") == []
    with pytest.raises(ValueError, match="holds image tokens"):
        check_meta({"modality": "image", "codebook_size": tok.codebook_size}, tok, "img.npz")
