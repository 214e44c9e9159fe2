"""A model tuned to one shop's catalog (``vsearch tune``): where its weights live in the index
folder, how a model is split into a frozen trunk and the stages that are trained, and how a build
or a search puts the tuned weights into the base model.

The tuned weights are only the trained stages (a safetensors file, never a pickle) in
``<index>/tuned/<digest>.safetensors``; ``tuned/CURRENT.json`` names the one builds use. A tuned
model's fingerprint is the base model's plus the digest of those weights, so the embedding cache
keeps the base and the tuned vectors apart and a build after a tune embeds every image once again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vsearch.errors import IndexFormatError, ModelError, ModelMismatchError, VsearchError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from vsearch.embedders import Embedder

TUNED_DIR = "tuned"
CURRENT_FILE = "CURRENT.json"  # the tuned model builds use (absent: none)
LATEST_FILE = "latest.json"  # the last tune's report, kept or not (what ``vsearch info`` shows)
TUNED_MODES = ("auto", "off")
FORMAT_VERSION = 1
# Trained stages when none are asked for: EfficientNet-Lite0's last two block stages (5-6) + head
# conv (at an equal budget one gains less and three no more: benchmarks/RESULTS.md,
# "Fine-tuning"); CLIP's last two transformer blocks of the image tower (not measured).
DEFAULT_STAGES = {"efficientnet": 2, "clip": 2}


@dataclass
class Parts:
    """A model split for tuning: ``trunk`` (frozen, its output cached) and ``head`` (trained).

    ``head(act)`` gives the descriptor before normalisation exactly as the embedder computes it;
    ``trainable`` are the (name, parameter-owning module) pairs whose weights are tuned and stored,
    named by their path in the embedder's model so ``apply_tuned`` can put them back.
    """

    kind: str
    stages: int
    trunk: Callable[[torch.Tensor], torch.Tensor]
    head: Callable[[torch.Tensor], torch.Tensor]
    trainable: list[tuple[str, Any]]

    def parameters(self) -> list:
        return [p for _, m in self.trainable for p in m.parameters()]

    def state(self) -> dict[str, torch.Tensor]:
        """The trained stages' tensors (weights and batch-norm buffers), keyed by model path."""
        out = {}
        for prefix, module in self.trainable:
            for k, v in module.state_dict().items():
                out[f"{prefix}.{k}"] = v.detach().float().contiguous().clone()
        return out

    def load(self, state: dict[str, torch.Tensor]) -> None:
        for prefix, module in self.trainable:
            own = {k[len(prefix) + 1 :]: v for k, v in state.items() if k.startswith(prefix + ".")}
            module.load_state_dict(own, strict=True)


def model_kind(embedder: Any) -> str | None:
    """ "efficientnet", "clip" or None (a model ``vsearch tune`` cannot train)."""
    from vsearch.embedders.clip import ClipEmbedder
    from vsearch.embedders.efficientnet import EfficientNetEmbedder

    if isinstance(embedder, EfficientNetEmbedder):
        return "efficientnet"
    if isinstance(embedder, ClipEmbedder) and hasattr(
        getattr(embedder.model, "visual", None), "transformer"
    ):
        return "clip"
    return None


def split_model(embedder: Any, stages: int | None = None) -> Parts:
    """The embedder's model as frozen trunk + trained last ``stages`` (default: DEFAULT_STAGES)."""
    kind = model_kind(embedder)
    if kind is None:
        raise ModelError(
            f"model {embedder.name} cannot be tuned: vsearch tune trains EfficientNet-Lite0 and "
            "open_clip vision transformers (CLIP)"
        )
    stages = DEFAULT_STAGES[kind] if stages is None else int(stages)
    return (
        _split_efficientnet(embedder, stages)
        if kind == "efficientnet"
        else _split_clip(embedder, stages)
    )


def _split_efficientnet(emb: Any, stages: int) -> Parts:
    import torch
    import torch.nn.functional as F

    m = emb.model
    n = len(m.blocks)
    if not 1 <= stages <= n:
        raise ModelError(
            f"--stages for {emb.name} must be 1 to {n} (block stages trained from the end); got "
            f"{stages}"
        )
    first = n - stages

    def trunk(x):
        return m.blocks[:first](m.bn1(m.conv_stem(x)))

    def head(a):
        stage = m.blocks[first:](a)
        out = emb._pool(m.bn2(m.conv_head(stage)))
        if not emb.multilayer:
            return out
        mid = stage.float().mean(dim=(2, 3))
        return torch.cat([F.normalize(out, dim=-1), 0.5 * F.normalize(mid, dim=-1)], dim=-1)

    trainable = [(f"blocks.{i}", m.blocks[i]) for i in range(first, n)]
    trainable += [("conv_head", m.conv_head), ("bn2", m.bn2)]
    return Parts("efficientnet", stages, trunk, head, trainable)


def _split_clip(emb: Any, stages: int) -> Parts:
    v = emb.model.visual
    blocks = v.transformer.resblocks
    n = len(blocks)
    if not 1 <= stages <= n:
        raise ModelError(
            f"--stages for {emb.name} must be 1 to {n} (image transformer blocks trained from the "
            f"end); got {stages}"
        )
    first = n - stages
    batch_first = getattr(v.transformer, "batch_first", True)

    def run(x, chosen):
        x = x if batch_first else x.transpose(0, 1)
        for blk in chosen:
            x = blk(x, attn_mask=None)
        return x if batch_first else x.transpose(0, 1)

    def trunk(x):
        return run(v._embeds(x), blocks[:first])

    def head(a):
        pooled, _ = v._pool(run(a, blocks[first:]))
        return pooled @ v.proj if v.proj is not None else pooled

    trainable = [(f"visual.transformer.resblocks.{i}", blocks[i]) for i in range(first, n)]
    trainable += [("visual.ln_post", v.ln_post)]
    if v.proj is not None:
        trainable.append(("visual.proj_holder", _ParamHolder(v, "proj")))
    return Parts("clip", stages, trunk, head, trainable)


class _ParamHolder:
    """A bare nn.Parameter attribute (CLIP's ``visual.proj``) seen as a module with one tensor."""

    def __init__(self, owner: Any, attr: str):
        self.owner, self.attr = owner, attr

    def parameters(self):
        return [getattr(self.owner, self.attr)]

    def state_dict(self):
        return {"weight": getattr(self.owner, self.attr)}

    def load_state_dict(self, state, strict=True):
        import torch

        if strict and set(state) != {"weight"}:
            raise ModelError(
                f"tuned weights for {self.attr}: expected one tensor 'weight', got {sorted(state)}"
            )
        with torch.no_grad():
            getattr(self.owner, self.attr).copy_(state["weight"])


# ---------------------------------------------------------------- stored weights


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 of the tuned tensors (names, shapes, float32 bytes): the tuned model's identity."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().float().contiguous()
        h.update(f"{k}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def tuned_fingerprint(base_fingerprint: str, digest: str) -> str:
    return f"{base_fingerprint}:tuned={digest[:16]}"


def save_weights(path: Path, state: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    """safetensors (never pickle), written to a temporary name and renamed into place."""
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=meta)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - a missing or damaged file gets one clear message
        raise IndexFormatError(
            f"tuned weights {path} cannot be read ({e}); run vsearch tune again or build with "
            "--tuned off"
        ) from e


def apply_tuned(embedder: Any, index_dir: Path, record: dict[str, Any]) -> Any:
    """Put the tuned weights a record names into a freshly loaded base embedder (in place) and
    give it the tuned fingerprint; refuses weights whose digest or base model do not match."""
    if record.get("base_fingerprint") != embedder.fingerprint:
        raise ModelMismatchError(
            f"the tuned model in {index_dir / TUNED_DIR} was tuned from "
            f"{record.get('base_fingerprint')!r}, "
            f"not from {embedder.fingerprint!r}; build with --tuned off or run vsearch tune again"
        )
    state = load_weights(index_dir / TUNED_DIR / record["weights"])
    digest = weights_digest(state)
    if digest != record["digest"]:
        raise IndexFormatError(
            f"tuned weights {record['weights']} do not match their digest; run vsearch tune again"
        )
    parts = split_model(embedder, int(record["stages"]))
    parts.load(state)
    embedder.fingerprint = tuned_fingerprint(record["base_fingerprint"], digest)
    embedder.tuned = {
        "weights": record["weights"],
        "digest": digest,
        "stages": int(record["stages"]),
    }
    return embedder


def read_record(index_dir: Path, name: str = CURRENT_FILE) -> dict[str, Any] | None:
    path = Path(index_dir) / TUNED_DIR / name
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise VsearchError(
            f"{path} cannot be read ({e}); delete it or run vsearch tune again"
        ) from e
    if data.get("version") != FORMAT_VERSION:
        raise VsearchError(
            f"{path} has format version {data.get('version')!r}; this vsearch reads "
            f"{FORMAT_VERSION}"
        )
    return data


def write_record(index_dir: Path, name: str, data: dict[str, Any]) -> None:
    folder = Path(index_dir) / TUNED_DIR
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (name + ".tmp")
    tmp.write_text(json.dumps({"version": FORMAT_VERSION, **data}, indent=2, sort_keys=True))
    os.replace(tmp, folder / name)


def build_embedder(
    index_dir: str | os.PathLike,
    model: str,
    pretrained: str | None,
    *,
    precision: str,
    tuned: str = "auto",
) -> Embedder:
    """The model a build embeds with: the base model, with the index's tuned weights when there
    are some for this very base model and ``tuned`` is "auto" ("off": always the base model)."""
    from vsearch.embedders import load_embedder

    if tuned not in TUNED_MODES:
        raise VsearchError(f"tuned must be one of {', '.join(TUNED_MODES)}; got {tuned!r}")
    embedder = load_embedder(model, pretrained, precision=precision)
    record = read_record(Path(index_dir)) if tuned == "auto" else None
    if record is not None and record.get("base_fingerprint") == embedder.fingerprint:
        apply_tuned(embedder, Path(index_dir), record)
    return embedder


def index_embedder(
    index_dir: str | os.PathLike,
    info: dict[str, Any],
    model: str | None,
    pretrained: str | None,
    precision: str,
) -> Embedder:
    """The query model of a generation (``info`` = its manifest's ``model``): the base model it
    names, with the tuned weights it was built with put back in. An explicitly named other model is
    loaded as is."""
    from vsearch.embedders import load_embedder

    same = model is None or (
        model == info.get("spec", info["name"]) and pretrained == info.get("pretrained")
    )
    if model is None:
        model, pretrained = info.get("spec", info["name"]), info.get("pretrained")
    embedder = load_embedder(model, pretrained, precision=precision)
    tuned = info.get("tuned")
    if tuned and same:
        apply_tuned(
            embedder,
            Path(index_dir),
            {**tuned, "base_fingerprint": info.get("base_fingerprint", embedder.fingerprint)},
        )
    return embedder


def manifest_info(embedder: Any) -> dict[str, Any]:
    """What a generation's manifest ``model`` dict records about a tuned model ({} for a base
    model)."""
    tuned = getattr(embedder, "tuned", None)
    if not tuned:
        return {}
    return {"tuned": dict(tuned), "base_fingerprint": embedder.fingerprint.rsplit(":tuned=", 1)[0]}


def weight_files_in_use(index_dir: Path, manifests: list[dict[str, Any]]) -> set[str]:
    """Tuned weight file names that CURRENT.json or a generation names (what gc keeps)."""
    used = {
        str((m.get("model") or {}).get("tuned", {}).get("weights"))
        for m in manifests
        if (m.get("model") or {}).get("tuned")
    }
    record = read_record(index_dir)
    if record is not None:
        used.add(record["weights"])
    return used
