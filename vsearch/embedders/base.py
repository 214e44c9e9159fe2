"""The embedder contract, and the shared batching/normalisation every model uses.

Normalising once, here, means FAISS inner product is cosine similarity everywhere
and no caller has to remember to do it.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from vsearch.embedders import precision as _precision
from vsearch.errors import ModelError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image


@runtime_checkable
class Embedder(Protocol):
    """Images (and maybe texts) in, L2-normalised float32 vectors out."""

    name: str  # user-facing spec, e.g. "clip:ViT-B-32/laion2b_s34b_b79k"
    dim: int
    fingerprint: str  # model + weights (+ vector-changing options); not precision
    supports_text: bool
    input_size: int  # short side preprocessing needs (JPEG draft decoding)
    precision: str  # "fp32" or "bf16", what is in use

    def preprocess(self, image: Image.Image) -> torch.Tensor: ...

    def embed_batch(self, batch: torch.Tensor) -> np.ndarray: ...

    def embed_images(self, images: list[Image.Image]) -> np.ndarray: ...

    def embed_texts(self, texts: list[str]) -> np.ndarray: ...


class TorchEmbedder:
    """Common plumbing for torch models: precision, locking, normalisation.

    Subclasses set the attributes of `Embedder`, `_transform` (PIL -> CHW float32,
    must be thread-safe) and implement `_encode_images`; text models also
    `_encode_texts`.
    """

    name: str
    dim: int
    fingerprint: str
    supports_text: bool = False
    input_size: int
    precision: str
    bf16_mode: str = "weights"

    def __init__(self) -> None:
        # One forward pass at a time: torch already uses every core for one batch,
        # and this keeps embed_batch / embed_texts safe to call from any thread.
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, "
            f"precision={self.precision!r})"
        )

    # -- images ---------------------------------------------------------------------
    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> CHW float32 tensor; safe to run in many decode threads at once."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        return self._transform(image)

    def embed_batch(self, batch: torch.Tensor) -> np.ndarray:
        """[n, C, H, W] preprocessed images -> float32 [n, dim], L2-normalised."""
        import torch

        if batch.ndim != 4:
            raise ModelError(
                f"model {self.name} expects a batch shaped [n, C, H, W]; got shape "
                f"{tuple(batch.shape)}"
            )
        if batch.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        batch = batch.to(_precision.input_dtype(self.precision, self.bf16_mode))
        with (
            self._lock,
            torch.inference_mode(),
            _precision.compute_context(self.precision, self.bf16_mode),
        ):
            out = self._encode_images(batch)
        return _normalise(out)

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        """Convenience: preprocess + embed_batch in the calling thread."""
        import torch

        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.embed_batch(torch.stack([self.preprocess(im) for im in images]))

    # -- texts ----------------------------------------------------------------------
    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Texts -> float32 [n, dim] in the image space, L2-normalised."""
        import torch

        if not self.supports_text:
            raise ModelError(
                f"model {self.name} is image-only and cannot embed text queries; "
                "use a CLIP model (e.g. --model clip) for text search"
            )
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with (
            self._lock,
            torch.inference_mode(),
            _precision.compute_context(self.precision, self.bf16_mode),
        ):
            out = self._encode_texts(list(texts))
        return _normalise(out)

    # -- subclass hooks ---------------------------------------------------------------
    def _transform(self, image: Image.Image) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _encode_images(self, batch: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


def _normalise(out: torch.Tensor) -> np.ndarray:
    """float32, unit length, C-contiguous: what FAISS inner-product search wants.

    bf16 outputs are widened before normalising so unit length holds to float32 precision.
    """
    import torch

    out = torch.nn.functional.normalize(out.float(), dim=-1)
    return np.ascontiguousarray(out.numpy(), dtype=np.float32)


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    """Content hash of a weights file: the same bytes anywhere give the same fingerprint."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
