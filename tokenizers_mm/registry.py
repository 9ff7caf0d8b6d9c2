"""The modality registry: one entry per modality names everything the commands need to handle it.

A :class:`Modality` maps its name (``image``, ``speech``, ``shape``) to its codec classes (by export
architecture), its inference pipeline, its evaluator, the files ``encode`` / ``compress`` read and
``decode`` / ``decompress`` write, and its input spec and model-card section. Entries hold ``"module:attr"``
strings, imported on first use, so reading the registry imports no model code.

Older names are still read where they were stored (dataset.json, export config.json, checkpoints, compressed
files, ``--modality`` flags): ``audio`` is ``speech`` and ``mesh`` is ``shape`` (:func:`canonical`).

Adding a modality is one folder (its codec, losses, module, pipeline, evaluator) and one :class:`Modality` entry
in :data:`MODALITIES`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any


def load_attr(path: str) -> Any:
    """The object named by ``"module:attr"`` (imported on first use)."""
    module_name, _, attr = path.partition(":")
    return getattr(importlib.import_module(module_name), attr)


@dataclass(frozen=True)
class Modality:
    """Everything the CLI, the exporter, the pipelines and the evaluation look up for one modality.

    Attributes:
        name: the registry key and the word users see.
        title: heading of its reports and results sections.
        aliases: older names of it still read from disk and flags.
        codecs: export architecture -> ``"module:Class"`` of the ``nn.Module`` an export rebuilds.
        pipeline: ``"module:Class"`` of its inference pipeline (``pipelines.load`` returns one).
        evaluator: ``"module:Class"`` of its :class:`~tokenizers_mm.eval.evaluator.Evaluator` (None: not evaluated).
        extensions: ``"module:NAME"`` of the file extensions ``encode`` / ``compress`` read.
        files: what the decoded files are, for messages (``PNG``, ``WAV``, ``mesh``).
        input_spec: ``"module:function"`` ``(codec, data_hparams) -> dict``: the export's ``inputs`` entry.
        card: ``"module:function"`` ``(config) -> list[str]``: its lines of the model card's token and usage
            sections.
    """

    name: str
    title: str
    aliases: tuple[str, ...] = ()
    codecs: dict[str, str] = field(default_factory=dict)
    pipeline: str = ""
    evaluator_class: str | None = None
    extensions: str | None = None
    files: str = "files"
    input_spec: str = ""
    card: str = ""

    def evaluator(self) -> type:
        if self.evaluator_class is None:
            raise ValueError(f"`tokenizers-mm evaluate` does not evaluate {self.name} models")
        return load_attr(self.evaluator_class)

    def file_extensions(self) -> tuple[str, ...]:
        if self.extensions is None:
            raise ValueError(f"{self.name} models read no files")
        return tuple(load_attr(self.extensions))


MODALITIES: dict[str, Modality] = {m.name: m for m in (
    Modality("image", "Image",
             codecs={"image/onedim": "tokenizers_mm.image.codec1d:OneDImageCodec",
                     "image/grid": "tokenizers_mm.image.grid_codec:GridImageCodec",
                     "image/flow": "tokenizers_mm.image.flow_codec:FlowImageCodec"},
             pipeline="pipelines.image:ImageTokenizer", evaluator_class="tokenizers_mm.eval.image:ImageEvaluator",
             extensions="tokenizers_mm.data.image:IMAGE_EXTENSIONS", files="PNG",
             input_spec="pipelines.image:input_spec", card="pipelines.image:card_lines"),
    Modality("speech", "Speech", aliases=("audio",),
             codecs={"speech/rvq": "tokenizers_mm.speech.codec:SpeechCodec",
                     "speech/xcodec2": "tokenizers_mm.speech.xcodec2_codec:XCodec2Codec"},
             pipeline="pipelines.audio:AudioTokenizer", evaluator_class="tokenizers_mm.eval.speech:SpeechEvaluator",
             extensions="pipelines.audio:AUDIO_FILE_EXTENSIONS", files="WAV",
             input_spec="pipelines.audio:input_spec", card="pipelines.audio:card_lines"),
    Modality("shape", "3D shape", aliases=("mesh",),
             codecs={"shape/occupancy": "tokenizers_mm.shape.codec:ShapeCodec"},
             pipeline="pipelines.shape:ShapeTokenizer", evaluator_class="tokenizers_mm.eval.shape:ShapeEvaluator",
             extensions="tokenizers_mm.data.mesh:MESH_EXTENSIONS", files="mesh",
             input_spec="pipelines.shape:input_spec", card="pipelines.shape:card_lines"),
    Modality("prior", "Token prior", codecs={"prior/ar": "tokenizers_mm.prior.model:TokenPrior"},
             pipeline="pipelines.prior:TokenPriorPipeline", input_spec="pipelines.prior:input_spec",
             card="pipelines.prior:card_lines"),
)}

_ALIASES = {alias: m.name for m in MODALITIES.values() for alias in m.aliases}


def canonical(name: str) -> str:
    """The registry name of ``name`` (``audio`` -> ``speech``, ``mesh`` -> ``shape``; others unchanged)."""
    return _ALIASES.get(name, name)


def spec(name: str) -> Modality:
    """The registry entry of modality ``name`` (an alias works too); ``ValueError`` naming the known ones."""
    key = canonical(name)
    if key not in MODALITIES:
        raise ValueError(f"unknown modality {name!r}; this tokenizers-mm knows {sorted(MODALITIES)}")
    return MODALITIES[key]


def codec_paths() -> dict[str, str]:
    """Every export architecture -> ``"module:Class"`` of its codec, over all modalities."""
    return {arch: path for m in MODALITIES.values() for arch, path in m.codecs.items()}


def modality_of_checkpoint(raw: dict[str, Any]) -> str:
    """The registry name of the modality a training checkpoint was trained on (its datamodule's, image when the
    checkpoint records none)."""
    return canonical((raw.get("datamodule_hyper_parameters") or {}).get("modality", "image"))
