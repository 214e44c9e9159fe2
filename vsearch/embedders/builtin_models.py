"""The models vsearch ships: registered through the same hook a plugin implements.

Each factory imports its model code (and torch, open_clip, timm) only when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vsearch.errors import ModelError

if TYPE_CHECKING:  # pragma: no cover
    from vsearch.embedders.base import Embedder
    from vsearch.embedders.registry import RegisterFunction


def register_models(register: RegisterFunction) -> None:
    register(
        "clip",
        load_clip_model,
        help="ViT-B-32 laion2b_s34b_b79k; 'clip:ARCH' or 'clip:ARCH/TAG' for another open_clip "
        "model",
    )
    register(
        "hf-hub",
        load_clip_model,
        help="'hf-hub:org/repo', an open_clip model on the Hugging Face hub",
    )
    register(
        "efficientnet-lite0",
        load_efficientnet_model,
        aliases=("efficientnet_lite0",),
        help="offline, image-only; read-outs ':gem', ':avg-ms', ':gem-ms', '+ml'",
    )


def load_clip_model(
    spec: str, pretrained: str | None = None, *, precision: str = "auto"
) -> Embedder:
    from vsearch.embedders.clip import load_clip

    return load_clip(spec, pretrained, precision=precision)


def load_efficientnet_model(
    spec: str, pretrained: str | None = None, *, precision: str = "auto"
) -> Embedder:
    if pretrained:
        raise ModelError(
            f"model {spec} uses its bundled ImageNet weights; pretrained={pretrained!r} is not "
            "accepted "
            "(--pretrained applies to CLIP models)"
        )
    from vsearch.embedders.efficientnet import EfficientNetEmbedder, parse_efficientnet_spec

    return EfficientNetEmbedder(precision=precision, **parse_efficientnet_spec(spec))
