"""CLIP via open_clip: the default model, and the only kind that answers text queries.

Weights are resolved here (cache, local file, or a download known to be possible)
and handed to open_clip as a file, so open_clip never starts a download we have not
checked can finish.
"""

from __future__ import annotations

import difflib
import os
from typing import TYPE_CHECKING

from vsearch.embedders import hub
from vsearch.embedders import precision as _precision
from vsearch.embedders.base import TorchEmbedder, file_sha256
from vsearch.errors import ModelError, ModelUnavailableError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

DEFAULT_CLIP_ARCH = "ViT-B-32"
DEFAULT_CLIP_PRETRAINED = "laion2b_s34b_b79k"

_HF_PREFIX = "hf-hub:"
_CONFIG_NAME = "open_clip_config.json"


class ClipEmbedder(TorchEmbedder):
    """An open_clip model; images and texts share one vector space."""

    supports_text = True
    bf16_mode = "weights"  # 4x faster than autocast for ViTs on CPU, cos > 0.9999

    def __init__(self, model, transform, tokenizer, *, name: str, fingerprint: str, precision: str):
        super().__init__()
        self.name = name
        self.fingerprint = fingerprint
        self.precision = precision
        self._tf = transform
        self._tokenizer = tokenizer
        self._model = _precision.prepare_model(model, precision, self.bf16_mode)
        self.dim = int(_output_dim(model))
        size = getattr(model.visual, "image_size", 224)
        self.input_size = int(min(size) if isinstance(size, (tuple, list)) else size)

    @property
    def model(self):
        """The underlying open_clip model (read-only use; weights may be bf16)."""
        return self._model

    def _transform(self, image: Image.Image) -> torch.Tensor:
        return self._tf(image)

    def _encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        return self._model.encode_image(batch)

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        return self._model.encode_text(self._tokenizer(texts))


def _output_dim(model) -> int:
    dim = getattr(model.visual, "output_dim", None)
    if dim:
        return dim
    proj = getattr(model, "text_projection", None)
    if proj is not None and hasattr(proj, "shape"):
        return proj.shape[-1]
    raise ModelError(f"cannot tell the embedding size of open_clip model {type(model).__name__}")


# -- spec parsing ---------------------------------------------------------------------------


def known_archs() -> list[str]:
    import open_clip

    return list(open_clip.list_models())


def is_clip_arch(name: str) -> bool:
    return name.replace("/", "-") in known_archs()


def parse_clip_spec(spec: str, pretrained: str | None) -> tuple[str, str | None]:
    """'clip', 'clip:ARCH[/TAG]', 'ARCH', 'hf-hub:org/repo' -> (arch or hf id, pretrained)."""
    if spec == "clip":
        return DEFAULT_CLIP_ARCH, pretrained
    body = spec[len("clip:") :] if spec.startswith("clip:") else spec
    if not body:
        raise ModelError(
            f"model {spec!r} names no architecture; e.g. "
            f"clip:{DEFAULT_CLIP_ARCH}/{DEFAULT_CLIP_PRETRAINED}"
        )
    if body.startswith(_HF_PREFIX):
        return body, pretrained
    if is_clip_arch(body):
        return body.replace("/", "-"), pretrained
    arch, sep, tag = body.partition("/")
    if sep and is_clip_arch(arch):
        return arch, pretrained or tag  # an explicit pretrained= wins over the one in the name
    raise unknown_model_error(spec)


def unknown_model_error(spec: str) -> ModelError:
    archs = known_archs()
    wanted = spec.removeprefix("clip:")
    close = [a for a in archs if a.lower() == wanted.lower()]
    close += [
        a for a in difflib.get_close_matches(wanted, archs, n=3, cutoff=0.6) if a not in close
    ]
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ModelError(
        f"model {spec!r} is not known.{hint} Accepted: 'clip' (= "
        f"{DEFAULT_CLIP_ARCH}/{DEFAULT_CLIP_PRETRAINED}), "
        "'efficientnet-lite0' (offline, image-only), any open_clip architecture "
        f"such as ViT-B-32, ViT-B-16, ViT-L-14 (optionally as 'clip:ARCH/TAG'; {len(archs)} in "
        "all, "
        "see open_clip.list_models()), or 'hf-hub:org/repo' for an open_clip model on the Hugging "
        "Face hub."
    )


# -- loading ----------------------------------------------------------------------------------


def load_clip(
    spec: str = "clip", pretrained: str | None = None, *, precision: str = "auto"
) -> ClipEmbedder:
    """Build a ClipEmbedder from a model spec and a pretrained tag or checkpoint path."""
    arch, pretrained = parse_clip_spec(spec, pretrained)
    # refuse a bad value before any download
    precision = _precision.resolve_precision(precision, spec)
    if arch.startswith(_HF_PREFIX):
        return _load_hf_hub(arch[len(_HF_PREFIX) :], pretrained, precision)
    return _load_builtin(arch, pretrained, precision)


def _load_builtin(arch: str, pretrained: str | None, precision: str) -> ClipEmbedder:
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(arch)
    if pretrained is None:
        if arch != DEFAULT_CLIP_ARCH:
            raise ModelError(
                f"model {arch} needs weights: pass pretrained= one of "
                f"{', '.join(tags) or '(no known tags)'}"
                " or a path to a checkpoint file (--pretrained)"
            )
        pretrained = DEFAULT_CLIP_PRETRAINED

    name, fingerprint, checkpoint = weights_identity(arch, pretrained, tags)
    pcfg = open_clip.get_pretrained_cfg(arch, pretrained) if checkpoint is None else {}
    if checkpoint is None:
        checkpoint = _tag_checkpoint(arch, pretrained, pcfg)

    # A tag's preprocessing (mean/std, interpolation, resize mode) travels with the weights.
    preprocess = {
        f"image_{k}": pcfg[k]
        for k in ("mean", "std", "interpolation", "resize_mode")
        if pcfg.get(k)
    }
    return _build(
        arch,
        checkpoint=checkpoint,
        preprocess=preprocess,
        quick_gelu=bool(pcfg.get("quick_gelu", False)),
        name=name,
        fingerprint=fingerprint,
        precision=precision,
    )


def weights_identity(arch: str, pretrained: str, tags: list[str]) -> tuple[str, str, str | None]:
    """(name, fingerprint, checkpoint path or None for a tag) of open_clip weights, without loading
    them.

    Shared by model loading and ``--embeddings`` imports, so an imported index and the model that
    later answers its queries always agree on the fingerprint.
    """
    if pretrained in tags:
        return f"clip:{arch}/{pretrained}", f"open_clip:{arch}:{pretrained}", None
    path = os.path.expanduser(pretrained)
    if os.path.isfile(path):
        checkpoint = os.path.abspath(path)
        return (
            f"clip:{arch}/{checkpoint}",
            f"open_clip:{arch}:sha256-{file_sha256(checkpoint)[:16]}",
            checkpoint,
        )
    raise ModelError(
        f"pretrained {pretrained!r} for model {arch} is neither a known tag nor an existing "
        "checkpoint file; "
        f"tags for {arch}: {', '.join(tags) or '(none)'}; or pass a path to a "
        ".bin/.pt/.safetensors checkpoint"
    )


def _tag_checkpoint(arch: str, tag: str, pcfg: dict) -> str:
    hf = pcfg.get("hf_hub", "")
    what = f"{arch}/{tag}"
    if hf:
        repo_id, filename = os.path.split(hf)  # "org/repo/" -> default file name, as open_clip does
        args = f"{arch!r}, pretrained={tag!r}"
        return hub.fetch_hf_file(
            repo_id, hub.weight_candidates(filename), what=what, create_args=args
        )
    return _url_checkpoint(pcfg.get("url", ""), what, f"{arch!r}, pretrained={tag!r}")


def _url_checkpoint(url: str, what: str, create_args: str) -> str:
    """Old-style tags with only a URL (none in open_clip 3.x, kept for older configs)."""
    if not url:
        raise ModelError(
            f"open_clip lists no download location for {what}; pass a checkpoint file "
            "(--pretrained)"
        )
    cached = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url))
    if os.path.isfile(cached):
        return cached
    reason = "HF_HUB_OFFLINE is set" if hub.hub_offline() else hub.reachable(url)
    if reason:
        raise ModelUnavailableError(
            f"weights for {what} are not cached ({cached}) and cannot be downloaded from {url} "
            f"({reason}). " + hub.how_to_supply_weights(create_args)
        )
    from open_clip.pretrained import download_pretrained_from_url

    try:
        return download_pretrained_from_url(url)
    except Exception as e:
        raise ModelUnavailableError(
            f"downloading weights for {what} from {url} failed: {e}. "
            + hub.how_to_supply_weights(create_args)
        ) from e


def _load_hf_hub(repo_id: str, pretrained: str | None, precision: str) -> ClipEmbedder:
    if pretrained:
        raise ModelError(
            f"model hf-hub:{repo_id} brings its own weights; drop pretrained={pretrained!r} "
            "(or use an open_clip architecture name with a checkpoint path)"
        )
    what = f"hf-hub:{repo_id}"
    args = repr(what)
    config = hub.fetch_hf_file(repo_id, [_CONFIG_NAME], what=what, create_args=args)
    weights = hub.fetch_hf_file(repo_id, hub.weight_candidates(""), what=what, create_args=args)
    folder = os.path.dirname(config)
    if os.path.dirname(weights) != folder:  # config and weights cached from different revisions
        import tempfile

        folder = tempfile.mkdtemp(prefix="vsearch-hf-")
        os.symlink(config, os.path.join(folder, _CONFIG_NAME))
        os.symlink(weights, os.path.join(folder, os.path.basename(weights)))
    # Cached hub files are symlinks to blobs named by their content hash (sha256 for LFS).
    blob = os.path.basename(os.path.realpath(weights))
    return _build(
        f"local-dir:{folder}",
        checkpoint=None,
        preprocess={},
        quick_gelu=False,
        name=f"clip:{what}",
        fingerprint=f"open_clip:{what}:{blob[:16]}",
        precision=precision,
    )


def _build(
    model_name, *, checkpoint, preprocess, quick_gelu, name, fingerprint, precision
) -> ClipEmbedder:
    import open_clip

    used = _precision.resolve_precision(precision, name)
    _precision.configure_threads()
    try:
        model, _, transform = open_clip.create_model_and_transforms(
            model_name,
            pretrained=checkpoint,
            force_quick_gelu=quick_gelu,
            device="cpu",
            **preprocess,
        )
    except Exception as e:
        where = f"checkpoint {checkpoint}" if checkpoint else model_name
        raise ModelError(f"open_clip could not load {name} from {where}: {e}") from e
    try:
        tokenizer = open_clip.get_tokenizer(model_name)
    except Exception as e:
        raise ModelError(f"the text tokenizer for {name} could not be loaded: {e}") from e
    return ClipEmbedder(
        model, transform, tokenizer, name=name, fingerprint=fingerprint, precision=used
    )
