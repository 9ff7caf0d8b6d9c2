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
    """The object named by ``"module:attr"`` or ``"module:Class.attr"`` (imported on first use)."""
    module_name, _, attr = path.partition(":")
    obj = importlib.import_module(module_name)
    for name in attr.split("."):
        obj = getattr(obj, name)
    return obj


@dataclass(frozen=True)
class Modality:
    """Everything the CLI, the exporter, the pipelines and the evaluation look up for one modality.

    Attributes:
        name: the registry key and the word users see.
        title: heading of its reports and results sections.
        aliases: older names of it still read from disk and flags.
        codecs: export architecture -> ``"module:Class"`` of the ``nn.Module`` an export rebuilds.
        pipeline: ``"module:Class"`` of its inference pipeline (a :class:`pipelines.base.TokenizerPipeline`):
            ``pipelines.load`` returns one; it also holds the modality's file reader (``extensions``,
            ``encode_files``), file writer (``write_decoded``), export input spec (``input_spec``) and model-card
            section (``card_lines``, ``token_summary``).
        evaluator: ``"module:Class"`` of its :class:`~tokenizers_mm.eval.evaluator.Evaluator` (None: not evaluated).
        trains_on: the datamodule modality its checkpoints train on (its own name unless it trains on tokens).
        files: what its decoded files are, for messages.
    """

    name: str
    title: str
    aliases: tuple[str, ...] = ()
    codecs: dict[str, str] = field(default_factory=dict)
    pipeline: str = ""
    evaluator: str | None = None
    trains_on: str | None = None
    files: str = "decoded"

    def pipeline_class(self) -> type:
        return load_attr(self.pipeline)

    def evaluator_class(self) -> type:
        if self.evaluator is None:
            raise ValueError(f"`tokenizers-mm evaluate` does not evaluate {self.name} models")
        return load_attr(self.evaluator)

    def extensions(self) -> tuple[str, ...]:
        """The file extensions ``encode`` / ``compress`` read (lower case, no dot)."""
        return tuple(self.pipeline_class().extensions)

    def input_spec(self, codec: Any, data_hparams: dict[str, Any]) -> dict[str, Any]:
        """The ``inputs`` entry of an export's config.json."""
        return self.pipeline_class().input_spec(codec, data_hparams)

    def card_lines(self, cfg: dict[str, Any]) -> list[str]:
        """The model card's Tokens and Use sections of an export config."""
        return self.pipeline_class().card_lines(cfg)

    def token_summary(self, cfg: dict[str, Any]) -> str:
        """One line on an export's tokens."""
        return self.pipeline_class().token_summary(cfg)

    def trains_on_data(self, data_modality: str) -> bool:
        """Whether a checkpoint of this modality may have trained on datamodule modality ``data_modality``."""
        return canonical(data_modality) == (self.trains_on or self.name)


MODALITIES: dict[str, Modality] = {m.name: m for m in (
    Modality("image", "Image",
             codecs={"image/onedim": "tokenizers_mm.image.codec1d:OneDImageCodec",
                     "image/grid": "tokenizers_mm.image.grid_codec:GridImageCodec",
                     "image/flow": "tokenizers_mm.image.flow_codec:FlowImageCodec"},
             pipeline="pipelines.image:ImagePipeline", evaluator="tokenizers_mm.eval.image:ImageEvaluator",
             files="PNG"),
    Modality("speech", "Speech", aliases=("audio",),
             codecs={"speech/rvq": "tokenizers_mm.speech.codec:SpeechCodec",
                     "speech/xcodec2": "tokenizers_mm.speech.xcodec2_codec:XCodec2Codec"},
             pipeline="pipelines.audio:SpeechPipeline", evaluator="tokenizers_mm.eval.speech:SpeechEvaluator",
             files="WAV"),
    Modality("shape", "3D shape", aliases=("mesh",),
             codecs={"shape/occupancy": "tokenizers_mm.shape.codec:ShapeCodec"},
             pipeline="pipelines.shape:ShapePipeline", evaluator="tokenizers_mm.eval.shape:ShapeEvaluator",
             files="mesh"),
    Modality("prior", "Token prior", codecs={"prior/ar": "tokenizers_mm.prior.model:TokenPrior"},
             pipeline="pipelines.prior:TokenPriorPipeline", trains_on="tokens"),
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
