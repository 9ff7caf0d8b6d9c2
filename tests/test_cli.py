"""The project's own subcommands, run through the real entry point."""

import json
import os
import shutil

import yaml

from tokenizers_mm.cli import main


def test_data_build_and_inspect(photo_dir, tmp_path, capsys):
    out = str(tmp_path / "shards")
    assert main(["data", "build", "--modality", "image", "--src", photo_dir, "--out", out,
                 "--shard-size", "2", "--val-fraction", "0.34", "--seed", "0"]) == 0
    assert "wrote {'train': 4, 'val': 2} samples of image" in capsys.readouterr().out
    manifest = json.load(open(os.path.join(out, "dataset.json")))
    assert manifest["settings"]["shard_size"] == 2 and manifest["bytes"]["train"] > 0
    assert main(["data", "inspect", out, "--split", "train"]) == 0
    text = capsys.readouterr().out
    assert "samples: 4" in text and "image: shape [3, 64, 64]" in text and "corrupt: 0" in text
    assert main(["data", "inspect", os.path.join(out, "val-{000000..000000}.tar"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 2


def test_data_build_mesh_reports_skipped(mesh_dir, tmp_path, capsys):
    from tokenizers_mm.data.embedded import embedded_dir

    shutil.copy(os.path.join(embedded_dir("meshes"), "pymeshlab", "face000.ply"), mesh_dir)  # an open range scan
    out = str(tmp_path / "m")
    assert main(["data", "build", "--modality", "mesh", "--src", mesh_dir, "--out", out, "--val-fraction", "0.3",
                 "--mesh-surface-points", "300", "--mesh-volume-points", "300", "--mesh-near-points", "300"]) == 0
    text = capsys.readouterr().out
    assert "skipped 1 file(s)" in text and "face000.ply: no meaningful inside" in text


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    assert main(["data", "build", "--modality", "audio", "--src", str(tmp_path / "none"), "--out",
                 str(tmp_path / "o")]) == 2
    assert "source folder" in capsys.readouterr().err
    assert main(["data", "inspect", str(tmp_path / "missing-{0..1}.tar")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_data_bench_reads_the_config_data_section(embedded, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"modality": "audio", "train_urls": os.path.join(embedded, "audio"),
                                            "batch_size": 4, "num_workers": 0,
                                            "audio": {"sample_rate": 16000, "seconds": 0.5}}}))
    assert main(["data", "bench", "--config", str(cfg), "--batches", "3", "--warmup", "1"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["modality"] == "speech" and result["samples"] == 12 and result["samples_per_s"] > 0


def test_evaluate_writes_report(embedded, tmp_path, capsys):
    from test_training import tiny_config

    cfg = tiny_config(tmp_path, embedded)
    main(["fit", "--config", cfg, "--trainer.max_steps", "5"])  # not a multiple of the checkpoint interval
    run = tmp_path / "run"
    import torch

    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5
    out = tmp_path / "report"
    assert main(["evaluate", "--ckpt", str(run / "checkpoints" / "last.ckpt"), "--data",
                 os.path.join(embedded, "image"), "--out", str(out), "--max-samples", "20",
                 "--csv-log", str(run / "metrics.csv")]) == 0
    report = json.load(open(out / "report.json"))
    assert report["samples"]["count"] == 20 and report["tokens"]["per_sample"] == 16
    assert report["setup"]["image_size"] == 32
    (row,) = report["rows"]
    assert row["value"] == 16 and row["nominal_bytes"] == 20 and 5 < row["metrics"]["psnr"] < 60
    assert 0 < row["metrics"]["codebook_usage"] <= 1
    assert "| ours | 16 | 16 | 20 |" in capsys.readouterr().out
    jpeg = next(b for b in row["baselines"] if b["codec"] == "JPEG")
    assert report["baselines"]["samples"] == 20 and jpeg["target_bytes"] == 20
    for name in ("reconstructions.png", "loss_curves.png", "rate_distortion.png"):
        assert os.path.getsize(out / name) > 1000


def test_one_line_error_names_a_bytes_file_name():
    from tokenizers_mm.cli import _one_line

    line = _one_line(OSError(5, "Input/output error", b"/runs/x/events.out"))
    assert "/runs/x/events.out" in line and "\n" not in line
    assert _one_line(OSError("plain")) == "plain"
