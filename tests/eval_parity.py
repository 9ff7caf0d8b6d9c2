"""Seeded, untrained checkpoints of one tokenizer per modality, for the evaluation parity test.

Each checkpoint holds a freshly built module whose codec weights are those of the codec class built alone after
``torch.manual_seed(0)`` (so what else the module builds, e.g. discriminators, does not move them), in the layout
a Lightning checkpoint has (state dict, hyperparameters, the datamodule's hyperparameters, the class), so
``tokenizers-mm evaluate`` reads it as it reads a trained one. The numbers of an untrained model are poor but
deterministic: what the test checks is that the evaluation computes the same ones as the evaluator it replaced
(``tests/data/eval_golden/*.json``, written by that evaluator from these checkpoints).

After a deliberate change of a codec's numerics (its layers or initialization: the checkpoints are untrained), and
only then, rewrite the reference reports with today's evaluator and say why in the commit:

    OMP_NUM_THREADS=1 .venv/bin/python tests/eval_parity.py image shape speech
"""

from __future__ import annotations

import os

import torch

IMAGE = {"image_size": 32, "patch_size": 8, "num_tokens": 8, "encoder": {"width": 64, "depth": 2, "heads": 2},
         "decoder": {"width": 64, "depth": 2, "heads": 2}, "stem_channels": 16, "patch_embed": "conv",
         "patch_head": "conv", "register_init": "pyramid", "query_init": "pyramid", "causal_registers": True,
         "quantizer": {"kind": "fsq", "levels": [8, 5, 5, 5]}, "ordering": {"kind": "nested_dropout"}}
SHAPE = {"num_latents": 16, "latent_dim": 16, "encoder": {"width": 64, "depth": 1, "heads": 2, "num_freqs": 4},
         "decoder": {"width": 64, "depth": 1, "heads": 2}, "scales": [1, 4, 16],
         "quantizer": {"kind": "fsq", "levels": [8, 5, 5, 5]}}
SPEECH = dict(sample_rate=16000, seanet={"channels": 8, "dim": 32, "ratios": [8, 5, 4, 2], "causal": True,
                                         "decoder": "istft", "istft_channels": 64, "istft_layers": 4},
              rvq={"num_quantizers": 3, "codebook_size": 4, "decay": 0.9}, val_quantizers=[1, 3])

#: what ``tokenizers-mm evaluate`` is given per modality (after ``--ckpt``, ``--data``, ``--out``)
EVALUATE_ARGS = {"image": ["--max-samples", "6"],
                 "shape": ["--max-samples", "2", "--resolution", "16", "--chamfer-points", "2000"],
                 "speech": ["--max-samples", "2"]}
#: the embedded shard folder each modality evaluates on
DATA = {"image": "image", "shape": "mesh", "speech": "audio"}


def write_checkpoint(kind: str, path: str) -> str:
    """A seeded, untrained checkpoint of ``kind`` (image / shape / speech) at ``path``."""
    from tokenizers_mm.checkpointing import CLASS_KEY

    torch.manual_seed(0)
    if kind == "image":
        from tokenizers_mm.image import tokenizer1d

        cls = getattr(tokenizer1d, "OneDImageModule", None) or tokenizer1d.OneDTokenizer

        hp, data = IMAGE, {"modality": "image", "image": {"size": 32, "val_resize": 48}}
    elif kind == "shape":
        from tokenizers_mm.shape.tokenizer import ShapeModule as cls

        hp, data = SHAPE, {"modality": "mesh", "mesh": {"num_surface": 512}}
    else:
        from tokenizers_mm.speech.tokenizer import SpeechTokenizer as cls

        hp, data = SPEECH, {"modality": "audio", "audio": {"sample_rate": 16000, "loudness_lufs": -23.0}}
    model = cls(**hp)
    codec = model.inference_codec()
    torch.manual_seed(0)
    codec.load_state_dict(type(codec)(**codec.arch).state_dict())
    if kind == "speech":  # the codebooks initialize on their first input (k-means): give them a seeded one here
        torch.manual_seed(0)
        with torch.no_grad():
            codec.encode(0.1 * torch.randn(1, 1, 16000))
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams), "global_step": 0,
                "epoch": 0, "datamodule_hyper_parameters": data,
                CLASS_KEY: f"{cls.__module__}.{cls.__qualname__}"}, path)
    return path


def evaluate(kind: str, embedded: str, root: str) -> str:
    """Run ``tokenizers-mm evaluate`` on the seeded checkpoint of ``kind``; returns the report folder."""
    from tokenizers_mm.cli import main

    os.makedirs(root, exist_ok=True)
    ckpt = write_checkpoint(kind, os.path.join(root, f"{kind}.ckpt"))
    out = os.path.join(root, f"{kind}_report")
    code = main(["evaluate", "--ckpt", ckpt, "--data", os.path.join(embedded, DATA[kind]), "--out", out,
                 *EVALUATE_ARGS[kind]])
    assert code == 0, f"evaluate {kind} exited with {code}"
    return out


def write_golden(kinds: list[str], embedded: str = "data/embedded") -> None:
    """Rewrite ``tests/data/eval_golden/<kind>.json`` from the current evaluator (paths and file lists left out)."""
    import json
    import tempfile

    golden = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "eval_golden")
    with tempfile.TemporaryDirectory() as root:
        for kind in kinds:
            with open(os.path.join(evaluate(kind, embedded, root), "report.json")) as f:
                report = json.load(f)
            for key in ("checkpoint", "files"):
                report.pop(key, None)
            with open(os.path.join(golden, f"{kind}.json"), "w") as f:
                json.dump(report, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    write_golden(sys.argv[1:] or list(EVALUATE_ARGS))
