"""Layers shared by more than one modality (image, shape, the flow decoder, the token prior)."""

from .transformer import Attention, Block, Transformer, TransformerConfig, mlp

__all__ = ["Attention", "Block", "Transformer", "TransformerConfig", "mlp"]
