"""The model stage: decoded RGB images (and, for CLIP, texts) -> L2-normalised float32 vectors.

`load_embedder` turns a user's model spec into an `Embedder`; everything heavy
(torch, open_clip, timm) is imported only when a model is actually loaded.
"""

from __future__ import annotations

from vsearch.errors import ModelError

from .base import Embedder, TorchEmbedder
from .clip import DEFAULT_CLIP_ARCH, DEFAULT_CLIP_PRETRAINED
from .precision import PRECISIONS, bf16_supported

__all__ = [
    "DEFAULT_CLIP_ARCH",
    "DEFAULT_CLIP_PRETRAINED",
    "PRECISIONS",
    "Embedder",
    "TorchEmbedder",
    "bf16_supported",
    "load_embedder",
]

_EFFICIENTNET_SPECS = ("efficientnet-lite0", "efficientnet_lite0")


def load_embedder(model: str = "clip", pretrained: str | None = None, *, precision: str = "auto") -> Embedder:
    """Load the embedder a user named.

    model: "clip" (ViT-B-32 / laion2b_s34b_b79k), any open_clip architecture (alone or as
    "clip:ARCH" / "clip:ARCH/TAG"), "hf-hub:org/repo", "efficientnet-lite0" (offline,
    image-only) or "test-tiny" (tests only).
    pretrained: for CLIP architectures, a pretrained tag or a path to a checkpoint file.
    precision: "auto" (bf16 where the CPU has it natively), "fp32" or "bf16".

    Raises ModelError for names or weights that cannot be used, and its subclass
    ModelUnavailableError, within seconds, when CLIP weights are neither cached nor
    downloadable.
    """
    if not isinstance(model, str) or not model.strip():
        raise ModelError(f"model must be a non-empty name such as 'clip' or 'efficientnet-lite0'; got {model!r}")
    spec = model.strip()
    if spec.split(":", 1)[0] in _EFFICIENTNET_SPECS:
        if pretrained:
            raise ModelError(
                f"model {spec} uses its bundled ImageNet weights; pretrained={pretrained!r} is not accepted "
                "(--pretrained applies to CLIP models)"
            )
        from .efficientnet import EfficientNetEmbedder, parse_efficientnet_spec

        return EfficientNetEmbedder(precision=precision, **parse_efficientnet_spec(spec))
    if spec == "test-tiny":
        if pretrained:
            raise ModelError(f"model test-tiny is randomly initialised; pretrained={pretrained!r} is not accepted")
        from .tiny import load_tiny

        return load_tiny(precision=precision)

    from .clip import load_clip

    return load_clip(spec, pretrained, precision=precision)
