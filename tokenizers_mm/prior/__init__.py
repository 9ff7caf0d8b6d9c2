"""Token prior: a causal transformer over a tokenizer's ids (orderings per modality), range coding of the ids
with its probabilities (``constriction``), rate control by prefix search, samples and token statistics."""

from .model import TokenPrior
from .module import PriorModule

__all__ = ["TokenPrior", "PriorModule"]
