"""The prepared GPU check: training speed of the B configs against the chip's limit, reference codecs, a real run.

    bash scripts/gpu_check.sh                                  # one H100 / H200, about 10 minutes: reports/gpu/
    python scripts/gpu_check.py --cpu-smoke --out /tmp/smoke   # the same path on CPU with tiny models, seconds

For each B config (``flextok_b``, ``flextok_flow_b``, ``codec_16k``, ``codec_24k``, ``dmcodec_16k``, ``vat_b``) it
trains the config's model at the config's batch size on the embedded shards (images upsampled to the config's
size) with Lightning in ``--precision`` (bf16-mixed), fused AdamW, channels-last convolutions for the image
configs, and ``torch.compile`` off and, for the ``--compile-configs``, on. After ``--warmup`` steps it measures for
``--seconds``: steps/s, samples/s (and seconds of audio/s), peak GPU memory, the share of the time the GPU waited
for the data loader, and model FLOPs utilization: FLOPs of one training step (forward, backward; counted with
``torch.utils.flop_counter`` on an eager step) times steps/s over the chip's bf16 dense peak (``--peak-tflops``;
H100 / H200: 989 TFLOP/s per the vendor). Each measurement runs in a process of its own, so its peak is its own.

For the speech configs it trains the ``transformers`` reference codec of the same configuration (EnCodec for the
causal LSTM codec, DAC otherwise) at the same batch and segment length with the same precision and fused AdamW:
generator only (reconstruction L1 plus the quantizer's commitment), which is less work per step than the
project's GAN step, so the ratio (project / reference, seconds of audio per second) is a conservative one.

Then ``flextok_b`` trains from scratch for ``--train-seconds`` on the embedded photos (the first stage for
``--train-first-stage-steps`` steps, then the tokenizer, short warmups), and the loss of each phase must fall; the
checkpoint is exported and the export decodes val photos through ``pipelines`` in bf16 (a PNG grid).

Writes ``<out>/<config>.json``, ``<out>/train_flextok_b.json``, ``<out>/summary.json`` and ``<out>/table.md``.
``--budget`` bounds the whole check: what no longer fits is skipped and named as such in the table. Exit code 1
when a measurement failed or the loss did not fall.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.plugins.precision import MixedPrecision, Precision
from pytorch_lightning.utilities.enums import GradClipAlgorithmType

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# a recipe of tokenizers_mm.recipes, or one config file relative to configs/
CONFIGS = {"flextok_b": "flextok_b", "flextok_flow_b": "flextok_flow_b", "codec_16k": "speech/codec_16k",
           "codec_24k": "speech/codec_24k", "dmcodec_16k": "speech/dmcodec_16k", "vat_b": "vat_b"}
# --cpu-smoke runs each B config's path with the tiny sibling of its family
SMOKE = {"flextok_b": "flextok_tiny", "flextok_flow_b": "flextok_flow_tiny",
         "codec_16k": "speech/codec_tiny", "codec_24k": "speech/codec_tiny", "dmcodec_16k": "speech/codec_tiny",
         "vat_b": "vat_tiny"}
DATA_DIRS = {"image": "image", "audio": "audio", "mesh": "mesh"}
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0}  # vendor dense bf16 peaks


# ---- building a config's model and data -------------------------------------------------------------------------
def config_files(name: str, smoke: bool) -> list[str]:
    """The YAML files of config ``name`` (a recipe's base and variant, or one file), in the order they apply."""
    from tokenizers_mm import recipes

    return recipes.files((SMOKE if smoke else CONFIGS)[name], os.path.join(ROOT, "configs"))


def resolved_config(name: str, smoke: bool) -> dict[str, Any]:
    from tokenizers_mm import recipes

    return recipes.resolve(config_files(name, smoke))


def build(name: str, smoke: bool, data_root: str, extra: list[str] = ()) -> tuple[Any, Any]:
    """The LightningModule and ShardDataModule of config ``name``, data pointed at the embedded shards."""
    from pytorch_lightning.cli import LightningCLI

    from tokenizers_mm import recipes
    from tokenizers_mm.data import ShardDataModule
    from tokenizers_mm.harness import TokenizerModule

    paths = config_files(name, smoke)
    modality = recipes.resolve(paths)["data"]["modality"]
    args = [*(arg for p in paths for arg in ("--config", p)), "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.logger", "false",
            "--trainer.default_root_dir", tempfile.mkdtemp(prefix="gpu_check_"),
            "--data.train_urls", os.path.join(data_root, DATA_DIRS[modality]), "--data.val_urls", "null"]
    if smoke:
        args += ["--data.batch_size", "2", "--data.num_workers", "0"]
    cli = LightningCLI(TokenizerModule, ShardDataModule, subclass_mode_model=True, auto_configure_optimizers=False,
                       save_config_callback=None, run=False, args=[*args, *extra])
    return cli.model, cli.datamodule


def speed_switches(model: Any, compiled: bool, channels_last: bool) -> dict[str, Any]:
    """The config switches ``optimizer.fused`` and ``optimizer.compile`` (applied when fit sets the model up) and
    channels-last weights; returns what was set."""
    import torch

    from tokenizers_mm.harness import compile_targets

    model.optim_config.fused = True
    model.optim_config.compile = compiled
    if channels_last:
        model.to(memory_format=torch.channels_last)
    targets = {id(m) for m in compile_targets(model)}
    parts = [n for n, m in model.named_children() if id(m) in targets] if compiled else []
    return {"fused_adamw": True, "channels_last": channels_last, "compiled_parts": parts}


# ---- measuring ----------------------------------------------------------------------------------------------------
class StepMeter(pl.Callback):
    """Step times after warm-up, data-loader waits, peak memory and the FLOPs of one eager step.

    A step is timed from the start of its batch to the end of its batch with the device synchronized, so the
    time between one batch's end and the next one's start is time the GPU spends waiting for the loader.
    """

    def __init__(self, warmup: int, seconds: float, count_flops: bool, device: str) -> None:
        self.warmup, self.seconds, self.count_flops, self.device = warmup, seconds, count_flops, device
        self.k = 0  # steps ended
        self.n = 0  # measured steps
        self.t0: float | None = None
        self.last_end: float | None = None
        self.wait = 0.0
        self.elapsed = 0.0
        self.batch_size = 0
        self.flops: int | None = None
        self.flop_mode: Any = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self.t0 is not None and self.last_end is not None:
            self.wait += now - self.last_end
        if self.count_flops and self.k == self.warmup - 1:  # the last warm-up step, outside the timed window
            from torch.utils.flop_counter import FlopCounterMode

            self.flop_mode = FlopCounterMode(display=False)
            self.flop_mode.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
        if self.flop_mode is not None:
            self.flop_mode.__exit__(None, None, None)
            self.flops = int(self.flop_mode.get_total_flops())
            self.flop_mode = None
        now = time.perf_counter()
        self.k += 1
        if self.k == self.warmup:
            self.t0, self.wait = now, 0.0
            if self.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
        elif self.t0 is not None:
            self.n += 1
            self.batch_size = int(next(v for v in batch.values() if torch.is_tensor(v)).shape[0])
            self.elapsed = now - self.t0
            if self.elapsed >= self.seconds:
                trainer.should_stop = True
        self.last_end = time.perf_counter()


def device_name() -> tuple[str, str]:
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.cuda.get_device_name(0)
    return "cpu", "cpu"


def peak_tflops(gpu: str, given: float | None) -> float | None:
    if given:
        return given
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in gpu), None)


class BF16Autocast(MixedPrecision):
    """Lightning's bf16-mixed without its refusal to clip gradients of fused optimizers: that refusal protects
    fp16's loss scaler, which bf16 does not use, so clipping the unscaled gradients is exact."""

    def clip_gradients(self, optimizer: Any, clip_val: float = 0.0, gradient_clip_algorithm: Any = None) -> None:
        Precision.clip_gradients(self, optimizer, clip_val, gradient_clip_algorithm or GradClipAlgorithmType.NORM)


def trainer_for(device: str, precision: str, callbacks: list, max_steps: int, max_seconds: float) -> Any:
    prec = ({"plugins": [BF16Autocast("bf16-mixed", device)]} if precision == "bf16-mixed"
            else {"precision": precision})
    return pl.Trainer(accelerator=device, devices=1, **prec, max_steps=max_steps,
                      max_time={"seconds": int(max_seconds) + 1}, logger=False, enable_checkpointing=False,
                      limit_val_batches=0, num_sanity_val_steps=0, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=callbacks)


def measure_config(a: argparse.Namespace) -> dict[str, Any]:
    """One B config in one process, ``--mode eager`` or ``compiled``: the numbers of the table's row."""
    import torch

    device, gpu = device_name()
    torch.manual_seed(0)
    model, dm = build(a.one, a.cpu_smoke, a.data)
    modality = dm.modality
    channels_last = a.channels_last == "on" or (a.channels_last == "image" and modality == "image")
    switches = speed_switches(model, a.mode == "compiled", channels_last)
    meter = StepMeter(a.warmup, a.seconds, count_flops=a.mode == "eager", device=device)
    trainer = trainer_for(device, a.precision, [meter], max_steps=10**9, max_seconds=a.seconds * 4 + 600)
    trainer.fit(model, datamodule=dm)
    if meter.n == 0:
        raise RuntimeError(f"{a.one}: no step after {a.warmup} warm-up steps (training ended at step {meter.k})")
    switches["fused_adamw"] = all(bool(opt.defaults.get("fused")) for opt in trainer.optimizers)
    steps_s = meter.n / meter.elapsed
    samples_s = steps_s * meter.batch_size
    flops = meter.flops if meter.flops is not None else a.flops
    peak = peak_tflops(gpu, a.peak_tflops)
    out = {"config": a.one, "mode": a.mode, "device": gpu, "precision": a.precision, **switches,
           "batch_size": meter.batch_size, "warmup_steps": a.warmup, "steps": meter.n,
           "seconds": round(meter.elapsed, 2), "steps_per_s": round(steps_s, 3), "samples_per_s": round(samples_s, 2),
           "loader_wait_fraction": round(meter.wait / max(meter.elapsed, 1e-9), 4),
           "flops_per_step": flops,
           "achieved_tflops": round(flops * steps_s / 1e12, 2) if flops else None,
           "mfu": round(flops * steps_s / (peak * 1e12), 4) if flops and peak else None,
           "peak_bf16_tflops": peak}
    if modality == "speech":  # the datamodule's word (configs may still say audio)
        out["audio_seconds_per_s"] = round(samples_s * dm.audio.seconds, 2)
        out["segment_seconds"] = dm.audio.seconds
    if device == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    else:
        out["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return out


# ---- the transformers reference codecs ----------------------------------------------------------------------------
REFERENCE_FAMILY = {"codec_24k": "EncodecModel", "codec_16k": "DacModel", "dmcodec_16k": "DacModel"}


def reference_codec(name: str, smoke: bool) -> tuple[Any, str, int, float, int]:
    """The ``transformers`` codec of speech config ``name`` built at that config's sizes (EnCodec for the causal
    LSTM codec, DAC for the others): (model, family, batch, segment seconds, sample rate)."""
    from transformers import DacConfig, DacModel, EncodecConfig, EncodecModel

    from tokenizers_mm.config import as_config
    from tokenizers_mm.speech.codec import RVQConfig
    from tokenizers_mm.speech.seanet import SEANetConfig

    cfg = resolved_config(name, smoke)
    args, data = cfg["model"]["init_args"], cfg["data"]
    sr = args["sample_rate"]
    s, q = as_config(SEANetConfig, args.get("seanet")), as_config(RVQConfig, args.get("rvq"))
    batch = 2 if smoke else data["batch_size"]
    seconds = data["audio"]["seconds"]
    hop = math.prod(s.ratios)
    family = REFERENCE_FAMILY[name]
    if family == "EncodecModel":
        kbps = q.num_quantizers * (sr / hop) * math.log2(q.codebook_size) / 1000
        model = EncodecModel(EncodecConfig(
            sampling_rate=sr, audio_channels=1, num_filters=s.channels, hidden_size=s.dim,
            upsampling_ratios=list(s.ratios), kernel_size=s.kernel_size, last_kernel_size=s.last_kernel_size,
            residual_kernel_size=s.residual_kernel_size, num_residual_layers=s.num_residual,
            dilation_growth_rate=s.dilation_base, compress=s.compress, use_causal_conv=s.causal,
            num_lstm_layers=s.bottleneck_layers, codebook_size=q.codebook_size, target_bandwidths=[kbps],
            normalize=False))
    else:
        model = DacModel(DacConfig(
            sampling_rate=sr, encoder_hidden_size=s.channels, decoder_hidden_size=(s.decoder_channels or s.channels)
            * 2 ** len(s.ratios), downsampling_ratios=list(reversed(s.ratios)), upsampling_ratios=list(s.ratios),
            hidden_size=s.dim, n_codebooks=q.num_quantizers, codebook_size=q.codebook_size,
            codebook_dim=q.codebook_dim or 8, hop_length=hop))
    return model, family, batch, seconds, sr


def reference_step(model: Any, family: str, x: Any) -> Any:
    """One generator step's loss: waveform L1 plus the quantizer's commitment, gradients through the quantizer."""
    import torch.nn.functional as F

    if family == "DacModel":
        out = model(x)
        y = out.audio_values.reshape(x.shape[0], -1)
        n = min(y.shape[-1], x.shape[-1])
        return F.l1_loss(y[..., :n], x.reshape(x.shape[0], -1)[..., :n]) + out.loss.mean()
    emb = model.encoder(x)
    bandwidth = model.config.target_bandwidths[-1]
    codes = model.quantizer.encode(emb, bandwidth)
    quantized = model.quantizer.decode(codes)
    y = model.decoder(emb + (quantized - emb).detach())  # straight-through, as EnCodec trains
    n = min(y.shape[-1], x.shape[-1])
    return F.l1_loss(y[..., :n], x[..., :n]) + F.mse_loss(emb, quantized.detach())


def measure_reference(a: argparse.Namespace) -> dict[str, Any]:
    import torch

    device, gpu = device_name()
    torch.manual_seed(0)
    model, family, batch, seconds, sr = reference_codec(a.one, a.cpu_smoke)
    model = model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x = (torch.randn(batch, 1, int(sr * seconds), device=device) * 0.1).clamp(-1, 1)
    dtype = torch.bfloat16 if "bf16" in a.precision else torch.float32
    t0, n = None, 0
    k = 0
    while True:
        with torch.autocast(device, dtype=dtype, enabled=dtype == torch.bfloat16):
            loss = reference_step(model, family, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        k += 1
        now = time.perf_counter()
        if k == a.warmup:
            t0 = now
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
        elif t0 is not None:
            n += 1
            if now - t0 >= a.seconds:
                break
    steps_s = n / (now - t0)
    out = {"config": a.one, "reference": family, "device": gpu, "precision": a.precision, "batch_size": batch,
           "segment_seconds": seconds, "steps": n, "steps_per_s": round(steps_s, 3),
           "samples_per_s": round(steps_s * batch, 2), "audio_seconds_per_s": round(steps_s * batch * seconds, 2),
           "parameters": sum(p.numel() for p in model.parameters()), "loss": "L1 + commitment (generator only)"}
    if device == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


# ---- a short real training, export and bf16 decode ----------------------------------------------------------------
def train_from_scratch(a: argparse.Namespace) -> dict[str, Any]:
    import torch

    import pipelines
    from tokenizers_mm.eval.image_metrics import psnr_db
    from tokenizers_mm.export import export_checkpoint
    from tokenizers_mm.visual import image_grid, save_png

    device, gpu = device_name()
    pl.seed_everything(0)
    first = a.train_first_stage_steps
    extra = ["--model.init_args.optimizer.warmup_steps", str(a.train_warmup)]
    if not a.cpu_smoke:
        extra += ["--model.init_args.first_stage.train_steps", str(first)]
    model, dm = build("flextok_b", a.cpu_smoke, a.data, extra)
    fs_cfg = getattr(model, "first_stage_cfg", None)
    first = int(fs_cfg.train_steps) if fs_cfg is not None else 0  # the config's own value under --cpu-smoke
    speed_switches(model, False, channels_last=device == "cuda")

    class Losses(pl.Callback):
        def __init__(self) -> None:
            self.rows: list[tuple[int, float]] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            loss = trainer.callback_metrics.get("train/loss")
            if loss is not None:
                self.rows.append((trainer.global_step, float(loss)))

    losses = Losses()
    trainer = trainer_for(device, a.precision, [losses], max_steps=a.train_max_steps, max_seconds=a.train_seconds)
    t0 = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    train_s = time.perf_counter() - t0
    phases = {"first_stage": [v for s, v in losses.rows if s <= first], "tokenizer": [v for s, v in losses.rows
                                                                                      if s > first]}
    result: dict[str, Any] = {"config": "flextok_b", "device": gpu, "precision": a.precision,
                              "train_seconds": round(train_s, 1), "steps": trainer.global_step,
                              "first_stage_steps": first, "warmup_steps": a.train_warmup, "phases": {}}
    ok = True
    for phase, vals in phases.items():
        if len(vals) < 10:
            continue
        w = max(2, len(vals) // 5)
        start, end = sum(vals[:w]) / w, sum(vals[-w:]) / w
        result["phases"][phase] = {"steps": len(vals), "loss_start": round(start, 5), "loss_end": round(end, 5),
                                   "fell": end < start}
        ok = ok and end < start
    if not result["phases"]:
        ok = False
        result["error"] = f"only {len(losses.rows)} logged losses: too few steps to judge"
    result["loss_fell"] = ok

    work = tempfile.mkdtemp(prefix="gpu_check_train_")
    ckpt = os.path.join(work, "last.ckpt")
    trainer.save_checkpoint(ckpt)
    export_checkpoint(ckpt, os.path.join(work, "export"), use_ema=False)
    tok = pipelines.load(os.path.join(work, "export"), device=device, dtype=torch.bfloat16)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    images = batch["image"][:8].float()
    t1 = time.perf_counter()
    recon = tok.decode(tok.encode(images.to(device))).float().cpu()
    if device == "cuda":
        torch.cuda.synchronize()
    result["decode"] = {"images": int(images.shape[0]), "size": int(images.shape[-1]), "dtype": "bfloat16",
                        "seconds": round(time.perf_counter() - t1, 3),
                        "psnr_db": round(float(psnr_db(recon.clamp(-1, 1), images, mse_floor=1e-12)), 2)}
    result["decode"]["png"] = save_png(image_grid([images, recon.clamp(-1, 1)]),
                                       os.path.join(a.out, "train_flextok_b_decode.png"))
    return result


# ---- the driver ---------------------------------------------------------------------------------------------------
def child(a: argparse.Namespace, task: str, name: str, mode: str, timeout: float,
          flops: int | None = None) -> dict[str, Any]:
    """Run one measurement in a fresh process; its JSON, or an ``error`` naming what failed."""
    cmd = [sys.executable, os.path.abspath(__file__), "--task", task, "--one", name, "--mode", mode,
           "--seconds", str(a.seconds), "--warmup", str(a.warmup), "--precision", a.precision, "--data", a.data,
           "--channels-last", a.channels_last, "--out", a.out, "--train-seconds", str(a.train_seconds),
           "--train-first-stage-steps", str(a.train_first_stage_steps), "--train-warmup", str(a.train_warmup),
           "--train-max-steps", str(a.train_max_steps)]
    cmd += ["--cpu-smoke"] if a.cpu_smoke else []
    cmd += ["--flops", str(flops)] if flops else []
    cmd += ["--peak-tflops", str(a.peak_tflops)] if a.peak_tflops else []
    t0 = time.perf_counter()
    # a session of its own, so a timeout also ends its loader and compile workers
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"error": f"{task} {name} {mode}: no result within {timeout:.0f} s"}
    wall = round(time.perf_counter() - t0, 1)
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (stderr or stdout).strip().splitlines()[-1:] or ["(no output)"]
        return {"error": f"{task} {name} {mode}: exit {proc.returncode}: {tail[0][:300]}", "wall_s": wall}
    return {**json.loads(lines[-1]), "wall_s": wall}


def fmt(v: Any, spec: str = "") -> str:
    return "-" if v is None else format(v, spec)


def table(rows: dict[str, Any], train: dict[str, Any] | None) -> str:
    head = ("| config | mode | samples/s | audio s/s | steps/s | MFU | peak GiB | loader wait | reference | "
            "ref audio s/s | ratio |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for name, r in rows.items():
        ref = r.get("reference") or {}
        for mode in ("eager", "compiled"):
            m = r.get(mode)
            if m is None:
                continue
            if "error" in m or "skipped" in m:
                lines.append(f"| {name} | {mode} | {m.get('error') or m.get('skipped')} |||||||||")
                continue
            mem = m.get("peak_memory_gib", m.get("peak_rss_gib"))
            ratio = r.get("ratio", {}).get(mode)
            lines.append(f"| {name} | {mode} | {fmt(m['samples_per_s'])} | {fmt(m.get('audio_seconds_per_s'))} | "
                         f"{fmt(m['steps_per_s'])} | {fmt(m['mfu'], '.1%') if m.get('mfu') is not None else '-'} | "
                         f"{fmt(mem)} | {m['loader_wait_fraction']:.1%} | {ref.get('reference', ref.get('error', '-'))}"
                         f" | {fmt(ref.get('audio_seconds_per_s'))} | {fmt(ratio)} |")
    text = head + "\n".join(lines) + "\n"
    if train:
        if "error" in train and "phases" not in train:
            text += f"\nflextok_b from scratch: {train['error']}\n"
        else:
            ph = "; ".join(f"{k}: {v['loss_start']} -> {v['loss_end']} over {v['steps']} steps"
                           for k, v in train.get("phases", {}).items())
            d = train.get("decode", {})
            text += (f"\nflextok_b from scratch, {train.get('train_seconds')} s, {train.get('steps')} steps: {ph}; "
                     f"loss fell: {train.get('loss_fell')}. Export + pipelines bf16 decode of {d.get('images')} "
                     f"images: {d.get('psnr_db')} dB PSNR ({d.get('png')}).\n")
    return text


def missing_teachers(name: str, smoke: bool) -> list[str]:
    """Local teacher folders a config's distillation needs that do not exist (nothing is downloaded)."""
    distill = resolved_config(name, smoke)["model"]["init_args"].get("distill") or {}
    if distill.get("source", "online") != "online":
        return []
    paths = [distill.get(k) for k in ("speech_teacher", "lm_teacher", "recognizer")]
    return [p for p in paths if p and not os.path.exists(os.path.join(ROOT, p))]


def run_all(a: argparse.Namespace) -> int:
    import torch

    start = time.perf_counter()
    os.makedirs(a.out, exist_ok=True)

    def left() -> float:
        return a.budget - (time.perf_counter() - start)

    per_item = max(60.0, a.seconds * 3 + 240)
    rows: dict[str, Any] = {}
    failed = False
    reserve = 0.0 if a.skip_train else a.train_seconds + 90  # the flextok_b run, its export and decode
    for name in a.configs:
        row: dict[str, Any] = {}
        modes = ["eager", "compiled"] if name in a.compile_configs else ["eager"]
        missing = missing_teachers(name, a.cpu_smoke)
        if missing:
            rows[name] = {m: {"skipped": f"needs its local teachers {missing}"} for m in modes}
            print(name, json.dumps(rows[name]), flush=True)
            continue
        for mode in modes:
            if left() - reserve < a.seconds + 30:
                row[mode] = {"skipped": "time budget"}
                continue
            flops = (row.get("eager") or {}).get("flops_per_step")
            row[mode] = child(a, "config", name, mode, min(per_item, left() - reserve), flops)
            failed |= "error" in row[mode]
            print(name, mode, json.dumps(row[mode]), flush=True)
        if CONFIGS[name].startswith("speech/"):
            if left() - reserve < a.seconds + 30:
                row["reference"] = {"skipped": "time budget"}
            else:
                row["reference"] = child(a, "reference", name, "eager", min(per_item, left() - reserve))
                failed |= "error" in row["reference"]
                print(name, "reference", json.dumps(row["reference"]), flush=True)
            ref_rate = row["reference"].get("audio_seconds_per_s")
            row["ratio"] = {m: round(row[m]["audio_seconds_per_s"] / ref_rate, 2) for m in modes
                            if ref_rate and row[m].get("audio_seconds_per_s")}
        rows[name] = row
        with open(os.path.join(a.out, f"{name}.json"), "w") as f:
            json.dump(row, f, indent=2)
    train = None
    if not a.skip_train:
        train = child(a, "train", "flextok_b", "eager", max(60.0, min(a.train_seconds + 300, left())))
        failed |= "error" in train or not train.get("loss_fell", False)
        print("train flextok_b", json.dumps(train), flush=True)
        with open(os.path.join(a.out, "train_flextok_b.json"), "w") as f:
            json.dump(train, f, indent=2)
    text = table(rows, train)
    summary = {"torch": torch.__version__, "device": device_name()[1], "cpu_smoke": a.cpu_smoke,
               "precision": a.precision, "seconds_per_measurement": a.seconds, "warmup_steps": a.warmup,
               "wall_s": round(time.perf_counter() - start, 1), "configs": rows, "train": train}
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(a.out, "table.md"), "w") as f:
        f.write(text)
    print(text)
    print(f"wrote {a.out}/summary.json and {a.out}/table.md in {summary['wall_s']} s")
    return 1 if failed else 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-smoke", action="store_true", help="tiny models and seconds on CPU (tests the whole path)")
    p.add_argument("--out", default=None, help="output folder (default reports/gpu, or reports/gpu_smoke)")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--compile-configs", nargs="*", default=["flextok_b", "codec_24k"], choices=list(CONFIGS),
                   help="configs measured with torch.compile too")
    p.add_argument("--seconds", type=float, default=None, help="measured seconds per config (default 10; smoke 1)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps before measuring (default 5; smoke 2)")
    p.add_argument("--precision", default=None, help="Lightning precision (default bf16-mixed)")
    p.add_argument("--channels-last", default="image", choices=["off", "on", "image"])
    p.add_argument("--peak-tflops", type=float, default=None, help="the chip's bf16 dense peak (default by name)")
    p.add_argument("--data", default=os.path.join(ROOT, "data", "embedded"), help="embedded shards folder")
    p.add_argument("--budget", type=float, default=None, help="seconds for the whole check (default 560; smoke 900)")
    p.add_argument("--train-seconds", type=float, default=None, help="flextok_b training time (default 180; smoke 60)")
    p.add_argument("--train-first-stage-steps", type=int, default=300)
    p.add_argument("--train-warmup", type=int, default=None, help="warmup steps of that run (default 100; smoke 2)")
    p.add_argument("--train-max-steps", type=int, default=None, help="step cap of that run (default 10**6; smoke 40)")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--task", default=None, choices=["config", "reference", "train"], help=argparse.SUPPRESS)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    p.add_argument("--mode", default="eager", choices=["eager", "compiled"], help=argparse.SUPPRESS)
    p.add_argument("--flops", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    smoke = a.cpu_smoke
    defaults = {"out": "reports/gpu_smoke" if smoke else "reports/gpu", "seconds": 1.0 if smoke else 10.0,
                "warmup": 2 if smoke else 5, "precision": "bf16-mixed",
                "budget": 900.0 if smoke else 560.0, "train_seconds": 60.0 if smoke else 180.0,
                "train_warmup": 2 if smoke else 100, "train_max_steps": 40 if smoke else 10**6}
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.seconds <= 0 or a.warmup < 2 or a.budget <= 0:
        p.error("--seconds and --budget must be > 0 and --warmup >= 2 (one warm-up step counts the FLOPs)")
    if not os.path.isfile(os.path.join(a.data, "image", "dataset.json")):
        p.error(f"--data {a.data}: no embedded shards there (expected image/dataset.json); run `make data`")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    if a.task is None:
        return run_all(a)
    import torch

    if a.cpu_smoke:
        torch.set_num_threads(1)
    if a.task == "config":
        print(json.dumps(measure_config(a)))
    elif a.task == "reference":
        print(json.dumps(measure_reference(a)))
    else:
        print(json.dumps(train_from_scratch(a)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
