"""House rules that span the package: which packages may import which, shared layers, one PSNR."""

from __future__ import annotations

import ast
import math
import os
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# packages that are shared by every modality (or are a modality themselves) and must not reach into image/
NOT_IMAGE = ("tokenizers_mm/flow", "tokenizers_mm/shape", "tokenizers_mm/speech", "tokenizers_mm/nn",
             "tokenizers_mm/data", "tokenizers_mm/eval")


def module_name(path: Path) -> str:
    """Dotted module name of ``path`` (relative to the repository root)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """``(line, absolute dotted name)`` of every import in ``path``, at any depth (function-level too).

    ``from X import y`` yields both ``X`` and ``X.y`` (``y`` may be a submodule); relative imports are resolved
    against the file's package.
    """
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            found += [(node.lineno, mod)] + [(node.lineno, f"{mod}.{a.name}") for a in node.names]
    return found


# the image modality's evaluator: it lives with the other evaluators in eval/ and scores with the image modality's
# perceptual network (LPIPS)
IMAGE_EVALUATOR = "tokenizers_mm/eval/image.py"


def violations(folders: tuple[str, ...], forbidden, allowed: tuple[str, ...] = ()) -> list[str]:
    """``file:line -> module`` for every import under ``folders`` (but the files ``allowed``) for which
    ``forbidden(module)`` is true."""
    out = []
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if str(path.relative_to(ROOT)) in allowed:
                continue
            for line, mod in imported_modules(path):
                if forbidden(mod):
                    out.append(f"{path.relative_to(ROOT)}:{line} -> {mod}")
    return sorted(set(out))


def is_image(mod: str) -> bool:
    return mod == "tokenizers_mm.image" or mod.startswith("tokenizers_mm.image.")


def is_cli(mod: str) -> bool:
    parts = mod.split(".")
    return parts[0] == "tokenizers_mm" and "cli" in parts


def test_shared_packages_do_not_import_image():
    assert violations(NOT_IMAGE, is_image, allowed=(IMAGE_EVALUATOR,)) == []


def test_pipelines_do_not_import_the_cli():
    assert violations(("pipelines",), is_cli) == []


def test_import_checker_sees_relative_and_nested_imports(tmp_path, monkeypatch):
    """The checker flags ``from ..image.vit import X`` inside a function and ``import tokenizers_mm.cli``."""
    pkg = tmp_path / "tokenizers_mm" / "flow"
    pkg.mkdir(parents=True)
    (pkg / "bad.py").write_text("def f():\n    from ..image.vit import PatchEmbed\n    return PatchEmbed\n")
    (pkg / "worse.py").write_text("import tokenizers_mm.cli as c\nfrom .. import image\n")
    (pkg / "good.py").write_text("from ..nn import Block\nfrom ..imagery import x\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    found = violations(("tokenizers_mm/flow",), is_image)
    assert found == ["tokenizers_mm/flow/bad.py:2 -> tokenizers_mm.image.vit",
                     "tokenizers_mm/flow/bad.py:2 -> tokenizers_mm.image.vit.PatchEmbed",
                     "tokenizers_mm/flow/worse.py:2 -> tokenizers_mm.image"]
    assert violations(("tokenizers_mm/flow",), is_cli) == ["tokenizers_mm/flow/worse.py:1 -> tokenizers_mm.cli"]


def test_shared_block_keeps_checkpoint_keys():
    """Old checkpoints load: the moved block keeps its parameter names (norm1, attn.qkv, attn.proj, norm2, mlp.0/2)."""
    from tokenizers_mm.nn import Block, Transformer, TransformerConfig

    keys = set(Block(16, 2).state_dict())
    assert keys == {f"{m}.{p}" for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.0", "mlp.2")
                    for p in ("weight", "bias")}
    stack = Transformer(TransformerConfig(width=16, depth=2, heads=2))
    assert {k.split(".")[0] for k in stack.state_dict()} == {"blocks", "norm"}



# ---- one PSNR -------------------------------------------------------------------------------------------------------
def reference_db(mse: torch.Tensor, peak2: float, floor: float) -> torch.Tensor:
    """The closed form every PSNR in the project had before it was written once: 10 log10(peak^2 / max(mse, floor))."""
    return 10 * torch.log10(peak2 / mse.double().clamp_min(floor))


def fixed_pairs() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 16, 16, generator=g) * 2 - 1
    pairs = [(x, x)]  # identical: the floor decides
    for noise in (0.003, 0.05, 0.4):  # 0.4 pushes values outside [-1, 1]: clamping matters
        pairs.append((x + noise * torch.randn(x.shape, generator=g) * torch.arange(1, 7).view(6, 1, 1, 1), x))
    return pairs


def test_psnr_callers_keep_their_semantics():
    """Each caller keeps its reduction, range, rounding and floor; values match the closed form to float32 rounding."""
    import numpy as np

    from tokenizers_mm.eval.baselines import psnr_uint8
    from tokenizers_mm.eval.image_metrics import psnr, psnr_db
    from tokenizers_mm.prior.rate import image_psnr

    for recon, x in fixed_pairs():
        rc, xc = recon.clamp(-1, 1), x.clamp(-1, 1)
        # evaluator: per image, inputs clamped to [-1, 1], floor 1e-10 (106 dB)
        want = reference_db((rc - xc).pow(2).flatten(1).mean(1), 4.0, 1e-10)
        assert psnr(recon, x).shape == (6,)
        torch.testing.assert_close(psnr(recon, x).double(), want, atol=2e-5, rtol=0)
        # training logs: one value from the whole batch's mse, no clamping
        want = reference_db((recon - x).pow(2).mean(), 4.0, 1e-10)
        torch.testing.assert_close(psnr_db(recon, x).double(), want, atol=2e-5, rtol=0)
        # rate control: per image on 8-bit-rounded pixels, in 0..255 units
        r, t = ((rc + 1) * 127.5).round(), ((xc + 1) * 127.5).round()
        want = reference_db((r - t).pow(2).flatten(1).mean(1), 255.0**2, 1e-10)
        torch.testing.assert_close(image_psnr(recon, x).double(), want, atol=2e-5, rtol=0)
        # JPEG / WebP baselines: one uint8 image, float64, floor equal to the evaluator's
        a = r[1].permute(1, 2, 0).numpy().astype(np.uint8)
        b = t[1].permute(1, 2, 0).numpy().astype(np.uint8)
        want = float(reference_db((r[1] - t[1]).pow(2).mean(), 255.0**2, 1e-10 * 127.5**2))
        assert psnr_uint8(a, b) == pytest.approx(want, abs=2e-5)
    # per image and per batch differ when the images' errors differ (the semantics are not interchangeable)
    recon, x = fixed_pairs()[2]
    assert abs(float(psnr(recon, x).mean()) - float(psnr_db(recon, x))) > 1.0
    assert float(psnr(x, x)[0]) == pytest.approx(10 * math.log10(4 / 1e-10), abs=1e-3)


def test_psnr_is_written_once():
    """No module computes a PSNR by hand: every ``log10(peak / mse)`` goes through eval.image_metrics.psnr_db."""
    pattern = re.compile(r"(torch|math|np|numpy)\.log10\(\s*(4(\.0)?|255(\.0)?\s*\*\*\s*2|255\.0\*\*2)\s*/")
    found = [f"{p.relative_to(ROOT)}:{i}" for folder in ("tokenizers_mm", "pipelines", "scripts")
             for p in sorted((ROOT / folder).rglob("*.py"))
             for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert found == []
    assert pattern.search("10 * torch.log10(4.0 / mse)") and pattern.search("math.log10(255.0**2 / mse)")


# ---- one atomic write -------------------------------------------------------------------------------------------------
def test_temp_then_rename_lives_in_io_only():
    """Only tokenizers_mm/io.py renames a temporary file into place; callbacks.archive_previous renames a finished
    file aside (keeps an earlier run's config), which is not a temporary write."""
    allowed = {"tokenizers_mm/io.py", "tokenizers_mm/callbacks.py"}
    pattern = re.compile(r"os\.(replace|rename)\(|tempfile\.mkstemp\(|\.tmp\{")
    found = [f"{p.relative_to(ROOT)}:{i}" for folder in ("tokenizers_mm", "pipelines", "scripts")
             for p in sorted((ROOT / folder).rglob("*.py")) if str(p.relative_to(ROOT)) not in allowed
             for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert found == []


def test_file_writers_leave_only_the_final_file(tmp_path):
    """PNG, figure, WAV and mesh writers go through io.atomic_path: the file is complete, readable, in the format
    of its writer, and nothing temporary is left beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import soundfile as sf
    import trimesh
    from PIL import Image

    from tokenizers_mm.eval.plots import save_figure
    from tokenizers_mm.shape.mesh_out import save_mesh
    from tokenizers_mm.speech.audio_io import write_wav
    from tokenizers_mm.visual import save_png

    img = (np.arange(8 * 8 * 3) % 256).astype(np.uint8).reshape(8, 8, 3)
    save_png(img, str(tmp_path / "a" / "grid.png"))
    assert (np.asarray(Image.open(tmp_path / "a" / "grid.png")) == img).all()
    fig = plt.figure(figsize=(1, 1))
    save_figure(fig, tmp_path / "b" / "plot.png")
    plt.close(fig)
    assert Image.open(tmp_path / "b" / "plot.png").format == "PNG"
    wave = torch.sin(torch.linspace(0, 100, 800))[None] * 0.5
    write_wav(str(tmp_path / "c" / "clip.wav"), wave, 8000)
    data, sr = sf.read(tmp_path / "c" / "clip.wav")
    assert sr == 8000 and data.shape == (800,) and np.abs(data - wave[0].numpy()).max() < 1e-4
    save_mesh(trimesh.creation.box(), str(tmp_path / "d" / "box.ply"))
    assert len(trimesh.load(tmp_path / "d" / "box.ply").faces) == 12
    names = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert names == ["a/grid.png", "b/plot.png", "c/clip.wav", "d/box.ply"]


# ---- quiet console ----------------------------------------------------------------------------------------------------
NOISE = ("litlogger", "LeafSpec", "`IterableDataset` has `__len__`")


def test_tiny_fit_prints_no_third_party_noise(embedded, tmp_path):
    """A CLI fit shows Lightning's INFO lines and its warning about the user's settings, but none of the three
    third-party lines (tip, torch deprecation, IterableDataset length)."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "tokenizers_mm.cli", "fit", "--config", str(ROOT / "configs/image/fsq_ae_tiny.yaml"),
           "--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1",
           "--trainer.default_root_dir", str(tmp_path / "run"), "--data.train_urls", f"{embedded}/image",
           "--data.val_urls", f"{embedded}/image", "--data.batch_size", "2", "--data.val_batch_size", "2",
           "--data.batches_per_epoch", "2", "--data.num_workers", "0"]
    env = {**os.environ, "TOKENIZERS_MM_LOG": "INFO", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default"}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "`Trainer.fit` stopped" in out  # INFO records are shown: the tip would be too
    assert "log_every_n_steps" in out  # Lightning's advice about the user's own settings is kept
    assert [line for line in out.splitlines() if any(n in line for n in NOISE)] == []


def test_quiet_keeps_the_users_warnings(caplog):
    """After install(): the exact third-party messages are dropped, a user's warning and other Lightning INFO
    records are not."""
    import logging
    import warnings

    from tokenizers_mm import quiet

    quiet.install()
    quiet.install()
    log = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    assert sum(isinstance(f, quiet._DropMessages) for f in log.filters) == 1
    with caplog.at_level(logging.INFO, logger="pytorch_lightning.utilities.rank_zero"):
        log.info("💡 Tip: For seamless cloud logging, try installing [litlogger](https://pypi.org/project/litlogger/)")
        log.info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]
    with warnings.catch_warnings(record=True) as seen:
        warnings.resetwarnings()  # no filter but the project's: every other warning is shown once per place
        quiet.install()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1)
        warnings.warn("Your `IterableDataset` has `__len__` defined. In combination ...", UserWarning, stacklevel=1)
        warnings.warn("my own deprecation", FutureWarning, stacklevel=1)
        warnings.warn("Your `IterableDataset` has `__len__` defined.", RuntimeWarning, stacklevel=1)  # another category: kept
    assert [str(w.message) for w in seen] == ["my own deprecation", "Your `IterableDataset` has `__len__` defined."]


# ---- reports/index.html -----------------------------------------------------------------------------------------------
def load_script(name: str):
    """Import ``scripts/<name>.py`` as a module (scripts/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_reports(root: Path) -> dict[str, list[str]]:
    """A small reports folder as ``make demo`` leaves it: an image and a speech report.json with their PNGs and WAVs,
    a folder with pictures only, a staging folder and a hidden folder (both must not be shown). Returns the media
    files (relative to ``root``) that the page must show, by kind."""
    import json

    import numpy as np
    import soundfile as sf
    from PIL import Image

    def png(rel: str) -> str:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(root / rel)
        return rel

    def wav(rel: str) -> str:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / rel, np.zeros(800, np.float32), 8000)
        return rel

    (root / "img").mkdir(parents=True)
    (root / "img" / "report.json").write_text(json.dumps({"per_k": [
        {"k": 1, "bytes": 1, "psnr": 17.5, "ssim": 0.41}, {"k": 8, "bytes": 5, "psnr": 19.25, "ssim": 0.5}],
        "baselines": {}}))
    (root / "voice").mkdir()
    (root / "voice" / "report.json").write_text(json.dumps({
        "per_quantizers": [{"num_quantizers": 1, "kbps": 0.2, "mel_distance": 1.4, "stft_distance": 2.7,
                            "si_sdr": -20.0}],
        "real_time_factor": {"device": "cpu", "encode": 0.01, "decode": 0.03}, "clips": 1, "seconds": 0.1}))
    images = [png("img/reconstructions.png"), png("img/rate distortion #1.png"), png("img/roundtrip/_grid.png"),
              *[png(f"img/roundtrip/tile_{i}.png") for i in range(14)], png("voice/rate_quality.png"),
              png("only_pictures/renders/a.png")]
    audio = [wav("voice/wav/clip_original.wav"), wav("voice/wav/clip_q1_0.20kbps.wav")]
    png(".img.partial/hidden.png")
    png("img/.cache/hidden.png")
    wav("img/roundtrip.partial/x.wav")
    return {"img": images, "audio": audio}


def test_index_page_links_every_picture_and_clip(tmp_path):
    """The page holds one table per report.json and one <img> / <audio controls> per PNG / WAV of the reports
    (none from hidden or staging folders); every link is relative and resolves from the page's folder."""
    from html.parser import HTMLParser
    from urllib.parse import unquote

    reports = tmp_path / "reports"
    want = fake_reports(reports)
    write_index = load_script("write_index")
    assert write_index.main(["--reports", str(reports), "--out", str(reports / "index.html")]) == 0

    class Links(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.found: dict[str, list[str]] = {"img": [], "audio": [], "a": []}
            self.tables = 0

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "img":
                self.found["img"].append(a["src"])
            elif tag == "audio":
                assert "controls" in a
                self.found["audio"].append(a["src"])
            elif tag == "a" and not a["href"].startswith("#"):
                self.found["a"].append(a["href"])
            elif tag == "table":
                self.tables += 1

    page = (reports / "index.html").read_text()
    parser = Links()
    parser.feed(page)
    for kind in ("img", "audio"):
        assert sorted(unquote(u) for u in parser.found[kind]) == sorted(want[kind])
    for url in parser.found["img"] + parser.found["audio"] + parser.found["a"]:
        assert "://" not in url and not url.startswith("/"), url
        assert (reports / unquote(url)).is_file(), url
    assert parser.tables == 2
    assert "19.25" in page and "-20.00" in page  # the tables' numbers, through the evaluators' formatters
    assert "real-time factor on cpu" in page  # the note under the speech table
    # the folder can be moved: the page only points inside it
    moved = tmp_path / "elsewhere"
    reports.rename(moved)
    assert all((moved / unquote(u)).is_file() for u in parser.found["img"] + parser.found["audio"])


def test_results_and_index_share_one_reader(tmp_path):
    """docs/results.md and the index read the same reports through write_results.read_reports."""
    reports = tmp_path / "reports"
    fake_reports(reports)
    write_results = load_script("write_results")
    entries = write_results.read_reports(str(reports))
    assert [(e["model"], e["title"]) for e in entries] == [("img", "Image"), ("voice", "Speech")]
    text = write_results.render(str(reports), [("image", 61.0)])
    assert "| image | 1m01s |" in text and "## Image: `img`" in text and "## Speech: `voice`" in text


def test_results_show_the_token_prior(tmp_path):
    """The demo's prior phase leaves tokens/report.json and rate_controlled/summary.json: both reach results.md."""
    import json

    reports = tmp_path / "reports"
    fake_reports(reports)
    prior = reports / "img_prior"
    (prior / "tokens").mkdir(parents=True)
    (prior / "rate_controlled").mkdir()
    (prior / "tokens" / "report.json").write_text(json.dumps({
        "samples": 7, "split": "val", "uniform_bits": 5.0, "unigram_entropy_bits": 4.25,
        "prior_bits_per_token": 3.0738, "zipf_exponent": 1.16}))
    (prior / "rate_controlled" / "summary.json").write_text(json.dumps({
        "files": [{}, {}], "target": {"metric": "psnr", "value": 18.0},
        "rate_control": {"mean_budget": 3.5, "mean_quality": 20.8, "nominal_bytes": 9, "file_bytes": 60,
                         "fixed_budget": 5, "fixed_mean_quality": 21.1, "fixed_nominal_bytes": 10,
                         "fixed_file_bytes": 62}}))
    text = load_script("write_results").render(str(reports), [])
    assert "## Token prior: `img_prior`" in text and "| 5.00 | 4.25 | 3.07 | 1.16 |" in text
    assert "of 2 held-out files at psnr >= 18" in text and "| rate-controlled | 3.50 | 20.80 | 9 | 60 |" in text
    assert "## Token prior" not in load_script("write_results").render(str(tmp_path / "none"), [])


# ---- modalities are plug-ins ---------------------------------------------------------------------------------------
MODALITY_WORDS = ("image", "audio", "speech", "mesh", "shape")


def modality_branches(path: Path) -> list[str]:
    """``file:line`` of every comparison with a modality word (``x == "mesh"``, ``m in ("image", "audio")``) and every
    ``hasattr`` call in ``path``: the per-modality branching the registry replaces."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Compare):
            consts = [c for c in ast.walk(node) if isinstance(c, ast.Constant) and c.value in MODALITY_WORDS]
            if consts:
                found.append(f"{path.name}:{node.lineno}")
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "hasattr":
            found.append(f"{path.name}:{node.lineno} hasattr")
    return found


def test_cli_and_export_do_not_branch_on_the_modality():
    """cli.py and export.py ask the registry (and the modality's pipeline / evaluator); the two hasattr calls left in
    cli.py look at Lightning plugins and callbacks, not at a model."""
    found = modality_branches(ROOT / "tokenizers_mm" / "cli.py") + modality_branches(ROOT / "tokenizers_mm" / "export.py")
    assert [f for f in found if not f.startswith("cli.py") or "hasattr" not in f] == []
    assert len([f for f in found if "hasattr" in f]) == 2


def test_inference_and_conversion_do_not_import_the_cli():
    assert violations(("pipelines", "tokenizers_mm/speech", "tokenizers_mm/eval", "tokenizers_mm/data"),
                      lambda m: m == "tokenizers_mm.cli" or m.startswith("tokenizers_mm.cli.")) == []


def test_registry_resolves_every_entry_and_reads_the_old_names():
    from tokenizers_mm import registry

    for m in registry.MODALITIES.values():
        assert m.pipeline_class().__name__ and m.extensions() is not None
        for arch, path in m.codecs.items():
            cls = registry.load_attr(path)
            assert arch.split("/")[0] in (m.name, "image", "speech", "shape", "prior") and cls.__name__
        if m.evaluator:
            assert m.evaluator_class().modality == m.name
    assert registry.spec("audio") is registry.spec("speech") and registry.spec("mesh") is registry.spec("shape")
    assert registry.canonical("image") == "image"
    with pytest.raises(ValueError, match="unknown modality 'video'"):
        registry.spec("video")
