"""scripts/gpu_check.py end to end on CPU (--cpu-smoke): a measured image config, a measured speech config beside
its transformers reference, a short flextok run whose loss falls, its export decoded in bf16 through pipelines."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_check_cpu_smoke(embedded, tmp_path):
    out = tmp_path / "gpu"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "gpu_check.py"), "--cpu-smoke",
                           "--configs", "flextok_b", "codec_24k", "--compile-configs", "--data", embedded,
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    image = summary["configs"]["flextok_b"]["eager"]
    assert image["steps"] >= 1 and image["samples_per_s"] > 0 and image["flops_per_step"] > 1e6
    assert image["fused_adamw"] and image["channels_last"] and image["precision"] == "bf16-mixed"
    assert 0 <= image["loader_wait_fraction"] < 1
    speech = summary["configs"]["codec_24k"]
    assert speech["eager"]["audio_seconds_per_s"] > 0 and not speech["eager"]["channels_last"]
    assert speech["reference"]["reference"] == "EncodecModel" and speech["reference"]["audio_seconds_per_s"] > 0
    assert speech["ratio"]["eager"] == round(speech["eager"]["audio_seconds_per_s"]
                                             / speech["reference"]["audio_seconds_per_s"], 2)
    train = summary["train"]
    assert train["loss_fell"] and all(p["loss_end"] < p["loss_start"] for p in train["phases"].values())
    assert train["decode"]["dtype"] == "bfloat16" and train["decode"]["psnr_db"] > 5
    assert os.path.getsize(train["decode"]["png"]) > 1000
    table = (out / "table.md").read_text()
    assert "| flextok_b | eager |" in table and "EncodecModel" in table and "loss fell: True" in table
    assert json.loads((out / "codec_24k.json").read_text()) == speech


def test_compile_switch_compiles_the_trainable_parts_in_place():
    from tokenizers_mm.harness import compile_targets
    from tokenizers_mm.image.fsq_autoencoder import FSQAutoencoder

    plain = FSQAutoencoder(base_channels=8, latent_dim=16)
    plain.configure_model()
    assert all(getattr(m, "_compiled_call_impl", None) is None for m in plain.modules())
    model = FSQAutoencoder(base_channels=8, latent_dim=16, optimizer={"compile": True, "fused": True})
    keys = set(model.state_dict())
    model.configure_model()
    parts = compile_targets(model)
    assert parts and all(m._compiled_call_impl is not None for m in parts)
    assert set(model.state_dict()) == keys  # checkpoints and exports see the same weights
    assert model.optim_config.fused and isinstance(model.optim_config.fused, bool)
    assert not any(p.requires_grad for m in model.children() if m not in parts for p in m.parameters())
