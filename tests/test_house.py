"""House rules that span the package: which packages may import which, shared layers, one PSNR."""

from __future__ import annotations

import ast
from pathlib import Path

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


def violations(folders: tuple[str, ...], forbidden) -> list[str]:
    """``file:line -> module`` for every import under ``folders`` for which ``forbidden(module)`` is true."""
    out = []
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
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
    assert violations(NOT_IMAGE, is_image) == []


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

