"""The model stage: decoded RGB images (and, for CLIP, texts) -> L2-normalised float32 vectors.

`load_embedder` turns a user's model spec into an `Embedder` by looking its name up in one
table (`registry`: the built-ins of `builtin_models`, plus plugins); everything heavy
(torch, open_clip, timm) is imported only when a model is actually loaded.
"""

from __future__ import annotations

from vsearch.embedders.base import Embedder, TorchEmbedder
from vsearch.embedders.clip import DEFAULT_CLIP_ARCH, DEFAULT_CLIP_PRETRAINED
from vsearch.embedders.precision import PRECISIONS, bf16_supported
from vsearch.embedders.registry import ENTRY_POINT_GROUP, ModelEntry, lookup, registered_models
from vsearch.errors import ModelError

__all__ = [
    "DEFAULT_CLIP_ARCH",
    "DEFAULT_CLIP_PRETRAINED",
    "ENTRY_POINT_GROUP",
    "ModelEntry",
    "PRECISIONS",
    "Embedder",
    "TorchEmbedder",
    "bf16_supported",
    "load_embedder",
    "registered_models",
]


def load_embedder(
    model: str = "clip", pretrained: str | None = None, *, precision: str = "auto"
) -> Embedder:
    """Load the embedder a user named, through the model table (`vsearch.embedders.registry`).

    model: "clip" (ViT-B-32 / laion2b_s34b_b79k), any open_clip architecture (alone or as
    "clip:ARCH" / "clip:ARCH/TAG"), "hf-hub:org/repo", "efficientnet-lite0[:READOUT]"
    (offline, image-only), or a name a plugin registered (entry point group "vsearch.models").
    pretrained: for CLIP architectures, a pretrained tag or a path to a checkpoint file.
    precision: "auto" (bf16 where the CPU has it natively), "fp32" or "bf16".

    Raises ModelError for names or weights that cannot be used (an unknown name gets the list
    of registered ones), and its subclass ModelUnavailableError, within seconds, when CLIP
    weights are neither cached nor downloadable.
    """
    if not isinstance(model, str) or not model.strip():
        raise ModelError(
            f"model must be a non-empty name such as 'clip' or 'efficientnet-lite0'; got {model!r}"
        )
    spec = model.strip()
    return lookup(spec).factory(spec, pretrained, precision=precision)
