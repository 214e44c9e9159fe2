"""A tiny, randomly initialised CLIP for plumbing tests: real code paths, no weights, ~0.1 s.

Its vectors carry no meaning, so it is never a default; it exists so that index,
search and CLI tests exercise the same embedder interface as production in
milliseconds instead of loading a 600 MB model.
"""

from __future__ import annotations

import hashlib
import json

from vsearch.embedders import precision as _precision
from vsearch.embedders.clip import ClipEmbedder

TINY_NAME = "test-tiny"
# Architecture name to register TINY_MODEL_CFG under with open_clip.add_model_config
# (a JSON file named f"{TINY_ARCH}.json"), e.g. to load a saved tiny checkpoint back.
TINY_ARCH = "vsearch-test-tiny"
TINY_SEED = 0
TINY_MODEL_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def build_tiny_model():
    """The tiny open_clip model with fixed weights, without touching the global RNG."""
    import open_clip
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = open_clip.model.CLIP(**json.loads(json.dumps(TINY_MODEL_CFG)))
    return model.eval()


def load_tiny(*, precision: str = "auto") -> ClipEmbedder:
    """The test-tiny embedder (supports text, dim 32, 64 px input)."""
    import open_clip

    used = _precision.resolve_precision(precision, TINY_NAME)
    model = build_tiny_model()
    transform = open_clip.image_transform(
        TINY_MODEL_CFG["vision_cfg"]["image_size"], is_train=False
    )
    tokenizer = open_clip.tokenizer.SimpleTokenizer(
        context_length=TINY_MODEL_CFG["text_cfg"]["context_length"]
    )
    return ClipEmbedder(
        model, transform, tokenizer, name=TINY_NAME, fingerprint=_fingerprint(model), precision=used
    )


def _fingerprint(model) -> str:
    """Hash of config + fp32 weights: changes if either does, e.g. across torch init changes."""
    h = hashlib.sha256(json.dumps(TINY_MODEL_CFG, sort_keys=True).encode())
    for key, tensor in model.state_dict().items():
        h.update(key.encode())
        h.update(tensor.detach().float().contiguous().numpy().tobytes())
    return f"test-tiny:{h.hexdigest()[:16]}"
