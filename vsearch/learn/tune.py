"""``vsearch tune``: fine-tune the last stages of an index's model on the shop's own catalog.

The frozen trunk (EfficientNet's stem and early blocks, CLIP's early transformer blocks) runs
once per catalog photo and per augmented copy (``tune_views``); its outputs are cached on disk,
memory-mapped, so memory stays bounded whatever the catalog size. The last stages are trained on
them with a supervised contrastive loss (views of one product attract, every other product in
the batch repels), batch-norm statistics frozen, and stopped early on held-out catalog views. A
photo held out for validation takes its near-duplicates (perceptual hash, ``hygiene``) with it,
so none of them is trained on. A result that does not beat the base model on that validation is
not kept. The job checkpoints to ``<index>/.tune-work/`` and resumes from there after a kill; one
tune or build at a time per index (``build_lock``). The result: ``tuned_model``.

This module is the job: what is trained on, the cache, keeping the result or not; the training
loop itself (loss, validation, checkpoints) is ``tune_train``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vsearch.embeddings.tuned_model import (
    CURRENT_FILE,
    LATEST_FILE,
    TUNED_DIR,
    Parts,
    save_weights,
    split_model,
    tuned_fingerprint,
    weights_digest,
    write_record,
)
from vsearch.errors import CatalogError, VsearchError
from vsearch.learn import tune_train
from vsearch.store import generations as store
from vsearch.store.lock import exclusive_build

TUNE_VERSION = 2
WORK_DIR = ".tune-work"
DEFAULT_VIEWS = 4  # augmented copies per photo, besides the photo itself
# products per batch: half with 2+ photos (4 views each), half single-photo (2 augmented copies)
BATCH_PRODUCTS = 24
MAX_STEPS = 300
VALIDATE_EVERY = 20
PATIENCE = 3  # validations without improvement before stopping
VAL_FRACTION = 0.15  # of the products with photos in two near-duplicate groups or more
MAX_VAL_PRODUCTS = 300
MIN_VAL_PRODUCTS = 3
# a small catalog holds out up to a third of those products, so whether the tune is kept rests on
# up to 20 photos rather than a handful
SMALL_VAL_PRODUCTS = 20
CHUNK = 32  # photos per trunk batch while caching
DISK_MARGIN = 256 << 20

# (phase, done, total); phases: "check", "cache", "train"
ProgressCallback = Callable[[str, int, int], None]


@dataclass(frozen=True)
class TunePlan:
    """What a tune will do, known before the long part starts (the CLI states it)."""

    model: str
    stages: int
    products: int
    photos: int  # catalog photos trained on
    pair_photos: int  # confirmed shopper photos trained on
    validation_photos: int
    views: int
    cache_bytes: int  # size of the cached trunk outputs on disk
    free_bytes: int
    resumed: bool


@dataclass(frozen=True)
class TuneReport:
    """How a tune ended. ``finished`` False: the time budget ran out while caching; run again to go
    on."""

    kept: bool
    reason: str
    finished: bool
    fingerprint: str | None = None
    weights: str | None = None
    validation: dict[str, Any] = field(default_factory=dict)
    steps: int = 0
    stopped: str = ""
    seconds: float = 0.0
    resumed: bool = False
    reembed_seconds: float = 0.0  # estimated time for the next build to embed every photo again
    plan: TunePlan | None = None


def tune_index(
    index_dir: str | os.PathLike,
    *,
    stages: int | None = None,
    views: int = DEFAULT_VIEWS,
    train_pairs: str | os.PathLike | None = None,
    max_minutes: float | None = None,
    max_steps: int = MAX_STEPS,
    validate_every: int = VALIDATE_EVERY,
    patience: int = PATIENCE,
    batch_products: int = BATCH_PRODUCTS,
    seed: int = 0,
    restart: bool = False,
    progress: ProgressCallback | None = None,
    on_plan: Callable[[TunePlan], None] | None = None,
) -> TuneReport:
    """Fine-tune the last ``stages`` of the model of the index in ``index_dir`` on its live
    generation's catalog photos (and the ``train_pairs`` CSV of image,product_id, training only).

    The result goes to ``<index>/tuned/`` and is used by the next ``build`` (``tuned="auto"``) if
    it beat the base model on held-out catalog views. ``max_minutes`` bounds the whole job (training
    stops with the best weights so far; a budget spent while caching leaves the work to resume).
    A killed tune resumes from its last checkpoint unless the catalog or options changed or
    ``restart``. Serving is untouched: nothing is published until a build.
    """
    import torch

    from vsearch.embedders import load_embedder

    started = time.monotonic()
    deadline = None if max_minutes is None else started + float(max_minutes) * 60
    if views < 1 or max_steps < 1 or validate_every < 1 or batch_products < 2:
        raise VsearchError(
            "tune needs views >= 1, max_steps >= 1, validate_every >= 1 and batch_products >= 2"
        )
    index_dir = Path(index_dir)
    tell = progress or (lambda phase, done, total: None)
    with exclusive_build(index_dir):
        gen = index_dir / store.read_current(index_dir)
        info = store.read_manifest(gen)["model"]
        embedder = load_embedder(
            info.get("spec", info["name"]), info.get("pretrained"), precision="fp32"
        )
        parts = split_model(embedder, stages)
        if parts.kind == "efficientnet":
            # NHWC convolutions: oneDNN runs the trunk and the training step markedly faster on
            # CPU than NCHW; this process's copy of the model only (builds are unchanged)
            embedder.model.to(memory_format=torch.channels_last)
        items = _items(index_dir, gen, train_pairs)
        sessions = _pair_sessions(embedder, items)
        key = hashlib.sha256(
            json.dumps(
                [TUNE_VERSION, embedder.fingerprint, parts.stages, views, seed, items]
            ).encode()
        ).hexdigest()
        work = index_dir / WORK_DIR
        if restart or tune_train.read_json(work / "plan.json").get("key") != key:
            shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)
        plan = tune_train.read_json(work / "plan.json")
        resumed = bool(plan)
        if not plan:
            plan = {"key": key, **split_views(items, seed=seed, progress=tell, sessions=sessions)}
            tune_train.write_json(work / "plan.json", plan)
        cached = plan["val"] + plan["train"]
        shape = _activation_shape(embedder, parts, items[cached[0]][0])
        rows = len(cached) * (1 + views)
        need = rows * int(np.prod(shape)) * 2
        have = (work / "acts.npy").stat().st_size if (work / "acts.npy").exists() else 0
        free = shutil.disk_usage(index_dir).free
        summary = TunePlan(
            model=embedder.name,
            stages=parts.stages,
            products=len(set(plan["labels"])),
            photos=sum(not items[i][3] for i in plan["train"]),
            pair_photos=sum(items[i][3] for i in plan["train"]),
            validation_photos=len(plan["val"]),
            views=views,
            cache_bytes=need,
            free_bytes=free,
            resumed=resumed,
        )
        if need - have + DISK_MARGIN > free:
            raise VsearchError(
                f"tune needs {need / 2**30:.2f} GiB for cached activations in {work} but the disk "
                "has "
                f"{free / 2**30:.2f} GiB free; free space, or use fewer --views (now {views})"
            )
        if on_plan is not None:
            on_plan(summary)
        acts = np.lib.format.open_memmap(
            work / "acts.npy",
            mode="r+" if (work / "acts.npy").exists() else "w+",
            dtype=np.float16,
            shape=(rows, *shape),
        )
        done = _cache(work, acts, embedder, parts, items, cached, plan, views, seed, deadline, tell)
        if done < rows:
            return TuneReport(
                kept=False,
                finished=False,
                resumed=resumed,
                plan=summary,
                seconds=time.monotonic() - started,
                reason=f"the time budget ran out while caching ({done}/{rows} views); run vsearch "
                "tune again to go on",
            )
        torch.manual_seed(seed)
        trained = tune_train.train(
            work,
            acts,
            parts,
            plan,
            items,
            cached,
            views,
            max_steps=max_steps,
            validate_every=validate_every,
            patience=patience,
            batch_products=batch_products,
            seed=seed,
            deadline=deadline,
            progress=tell,
        )
        report = _finish(index_dir, embedder, parts, trained, summary, info, started, resumed)
        del acts
        shutil.rmtree(work, ignore_errors=True)
        return report


# ---------------------------------------------------------------- what is trained on


def _items(index_dir: Path, gen: Path, train_pairs: str | os.PathLike | None) -> list[list]:
    """[path, product_id, content hash, is_pair] of every catalog photo of the generation, then of
    the train pairs whose product is in it."""
    items: list[list] = []
    seen: set[tuple[str, str]] = set()
    for _, pid, source, _, digest in store.read_image_records(gen):
        path = (
            str(index_dir / "downloads" / "objects" / digest[:2] / digest)
            if source.startswith(("http://", "https://"))
            else source
        )
        if (pid, digest) not in seen and os.path.isfile(path):
            seen.add((pid, digest))
            items.append([path, pid, digest, False])
    if not items:
        raise CatalogError(f"the index {index_dir} has no catalog photo on disk to tune on")
    if train_pairs is not None:
        from vsearch.catalog.rows import read_catalog

        known = {it[1] for it in items}
        for row in read_catalog(train_pairs, allow_outside_paths=True).rows:
            if row.product_id in known and os.path.isfile(row.image):
                items.append([str(row.image), row.product_id, "", True])
    return items


def _pair_sessions(embedder: Any, items: list[list]) -> dict[int, int]:
    """Near-duplicate session of each confirmed shopper photo (``learn.session_clusters`` on the
    base model's vectors: photos of a product taken in one session vouch for each other)."""
    pairs = [i for i, it in enumerate(items) if it[3]]
    if not pairs:
        return {}
    from vsearch.learn.tune_views import open_photo
    from vsearch.learn.verdict import session_clusters

    vectors = np.concatenate(
        [
            embedder.embed_images([open_photo(items[i][0]) for i in pairs[s : s + CHUNK]])
            for s in range(0, len(pairs), CHUNK)
        ]
    )
    clusters = session_clusters(vectors, [items[i][1] for i in pairs])
    return dict(zip(pairs, clusters.tolist()))


def split_views(
    items: list[list],
    *,
    seed: int = 0,
    progress: ProgressCallback | None = None,
    sessions: dict[int, int] | None = None,
) -> dict[str, Any]:
    """Validation photos, training photos and labels, with near-duplicates kept on one side.

    Photos are joined into groups by near-identical perceptual hashes (or equal content), confirmed
    shopper photos also by ``sessions`` (item -> near-duplicate session); products that share a
    group get one label (a cross-listed photo is not a negative of itself). For a share of the
    products with catalog photos in 2+ groups, one catalog photo is held out as a validation query;
    for a share of the products with shopper photos in 2+ sessions, one session's photos are; a
    held-out photo's whole group leaves training. The other photos (and pairs) are trained on; the
    catalog ones are the validation gallery.
    """
    from vsearch.catalog.hygiene import fingerprint_file, near_identical_pairs

    tell = progress or (lambda phase, done, total: None)
    prints = []
    for n, it in enumerate(items):
        prints.append(fingerprint_file(it[0]))
        tell("check", n + 1, len(items))
    parent = list(range(len(items)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    by_hash: dict[str, int] = {}
    pairs = [(i, j) for i, j, _ in near_identical_pairs(prints)]
    for i, it in enumerate(items):
        if it[2]:
            pairs.append((by_hash.setdefault(it[2], i), i))
    by_session: dict[int, int] = {}
    for i, c in (sessions or {}).items():
        pairs.append((by_session.setdefault(c, i), i))
    for i, j in pairs:
        parent[root(i)] = root(j)
    group = [root(i) for i in range(len(items))]
    label_parent: dict[str, str] = {}

    def lroot(p: str) -> str:
        while label_parent.setdefault(p, p) != p:
            p = label_parent[p]
        return p

    first_pid: dict[int, str] = {}
    for i, it in enumerate(items):
        other = first_pid.setdefault(group[i], it[1])
        label_parent[lroot(it[1])] = lroot(other)
    names = sorted({lroot(it[1]) for it in items})
    label_of = {n: k for k, n in enumerate(names)}
    labels = [label_of[lroot(it[1])] for it in items]

    groups_of: dict[int, set[int]] = {}
    for i, it in enumerate(items):
        if not it[3]:
            groups_of.setdefault(labels[i], set()).add(group[i])
    eligible = sorted(lab for lab, gs in groups_of.items() if len(gs) >= 2)
    rng = random.Random(seed)
    rng.shuffle(eligible)
    n_val = _validation_count(len(eligible))
    held: set[int] = set()
    val: list[int] = []
    for lab in eligible:
        if len(val) >= n_val:
            break
        own = [
            i
            for i in range(len(items))
            if labels[i] == lab and not items[i][3] and group[i] not in held
        ]
        remaining = {group[i] for i in own}
        if len(remaining) < 2:
            continue
        q = rng.choice(own)
        held.add(group[q])
        val.append(q)
    sessions_of: dict[int, set[int]] = {}
    for i, it in enumerate(items):
        if it[3] and group[i] not in held:
            sessions_of.setdefault(labels[i], set()).add(group[i])
    pair_eligible = sorted(lab for lab, gs in sessions_of.items() if len(gs) >= 2)
    rng.shuffle(pair_eligible)
    n_pair = _validation_count(len(pair_eligible)) if pair_eligible else 0
    for lab in pair_eligible[:n_pair]:
        g = rng.choice(sorted(sessions_of[lab]))
        held.add(g)
        val += [i for i in range(len(items)) if group[i] == g and items[i][3]]
    train = [i for i in range(len(items)) if group[i] not in held]
    if len({labels[i] for i in val}) < MIN_VAL_PRODUCTS:
        raise CatalogError(
            f"tuning needs at least {MIN_VAL_PRODUCTS} products with two different photos (or two "
            "sessions "
            f"of confirmed shopper photos) to validate on (this catalog has {len(eligible)} and "
            f"{len(pair_eligible)}); add more views of the products or --train-pairs"
        )
    return {"val": val, "train": train, "labels": labels, "groups": group}


def _validation_count(eligible: int) -> int:
    """Products to hold one photo (or session) out of, of ``eligible`` that have two or more."""
    share = max(round(VAL_FRACTION * eligible), min(SMALL_VAL_PRODUCTS, eligible // 3))
    return min(MAX_VAL_PRODUCTS, max(MIN_VAL_PRODUCTS, share))


# ---------------------------------------------------------------- cached trunk outputs


def _activation_shape(embedder: Any, parts: Parts, path: str) -> tuple[int, ...]:
    import torch

    from vsearch.learn.tune_views import open_photo

    with torch.inference_mode():
        return tuple(parts.trunk(embedder.preprocess(open_photo(path))[None]).shape[1:])


def _cache(
    work: Path,
    acts: np.ndarray,
    embedder: Any,
    parts: Parts,
    items: list[list],
    cached: list[int],
    plan: dict[str, Any],
    views: int,
    seed: int,
    deadline: float | None,
    tell: ProgressCallback,
) -> int:
    """Fill ``acts`` (row k*(1+views)+v = view v of photo cached[k]; v=0 the photo itself) from
    where the last run stopped; returns the rows done."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from vsearch.learn.tune_views import augmented_view, open_photo

    per = 1 + views
    rows = len(cached) * per
    done = int(tune_train.read_json(work / "cached.json").get("rows", 0))
    catalog = [i for i in plan["train"] if not items[i][3]]  # backgrounds: never a held-out photo

    def view(r: int):
        k, v = divmod(r, per)
        path = items[cached[k]][0]
        if v == 0:
            return embedder.preprocess(open_photo(path))
        rng = random.Random(f"{seed}:{cached[k]}:{v}")
        return embedder.preprocess(
            augmented_view(path, items[rng.choice(catalog)][0] if catalog else None, rng)
        )

    tell("cache", done, rows)
    # photos are decoded and augmented in threads (PIL releases the GIL) while the trunk runs
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        pending = pool.map(view, range(done, min(rows, done + CHUNK)))
        while done < rows:
            if deadline is not None and time.monotonic() > deadline:
                break
            stop = min(rows, done + CHUNK)
            batch = list(pending)
            pending = pool.map(view, range(stop, min(rows, stop + CHUNK)))
            with torch.inference_mode():
                acts[done:stop] = parts.trunk(torch.stack(batch)).numpy().astype(np.float16)
            acts.flush()
            done = stop
            tune_train.write_json(work / "cached.json", {"rows": done})
            tell("cache", done, rows)
    return done


# ---------------------------------------------------------------- the result


def _finish(
    index_dir: Path,
    embedder: Any,
    parts: Parts,
    trained: tune_train.Trained,
    plan: TunePlan,
    info: dict[str, Any],
    started: float,
    resumed: bool,
) -> TuneReport:
    base, tuned = trained.base, trained.tuned
    kept = tuned["score"] > base["score"]
    digest = weights_digest(trained.best)
    record: dict[str, Any] = {
        "base_model": info.get("spec", info["name"]),
        "pretrained": info.get("pretrained"),
        "base_fingerprint": embedder.fingerprint,
        "stages": parts.stages,
        "kind": parts.kind,
        "products": plan.products,
        "photos": plan.photos,
        "pair_photos": plan.pair_photos,
        "validation_photos": plan.validation_photos,
        "views": plan.views,
        "validation": {"base": base, "tuned": tuned},
        "steps": trained.steps,
        "stopped": trained.stopped,
        "tuned_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.monotonic() - started, 1),
    }
    reembed = _reembed_estimate(embedder, plan.photos)
    if kept:
        name = f"{digest[:16]}.safetensors"
        folder = index_dir / TUNED_DIR
        folder.mkdir(parents=True, exist_ok=True)
        save_weights(
            folder / name,
            trained.best,
            {
                "base_fingerprint": embedder.fingerprint,
                "digest": digest,
                "stages": str(parts.stages),
            },
        )
        record.update(
            weights=name, digest=digest, fingerprint=tuned_fingerprint(embedder.fingerprint, digest)
        )
        reason = (
            f"kept: mean reciprocal rank of the held-out photos and their augmented copies "
            f"{base['score']:.3f} -> {tuned['score']:.3f}"
        )
        write_record(index_dir, CURRENT_FILE, record)
    else:
        reason = (
            "not kept: the tuned model did not beat the base model on held-out catalog views "
            "(mean reciprocal rank "
            f"{tuned['score']:.3f} vs {base['score']:.3f}); builds keep using "
            + (
                "the previously tuned model"
                if (index_dir / TUNED_DIR / CURRENT_FILE).is_file()
                else "the base model"
            )
        )
    write_record(
        index_dir,
        LATEST_FILE,
        {**record, "kept": kept, "reason": reason, "reembed_seconds": round(reembed, 1)},
    )
    return TuneReport(
        kept=kept,
        reason=reason,
        finished=True,
        fingerprint=record.get("fingerprint"),
        weights=record.get("weights"),
        validation=record["validation"],
        steps=trained.steps,
        stopped=trained.stopped,
        seconds=time.monotonic() - started,
        resumed=resumed,
        reembed_seconds=reembed,
        plan=plan,
    )


def _reembed_estimate(embedder: Any, photos: int) -> float:
    """Seconds the next build will spend embedding every photo again (model time of 16 photos,
    scaled)."""
    import torch

    size = int(getattr(embedder, "input_size", 224))
    batch = torch.zeros((16, 3, size, size))
    t = time.perf_counter()
    embedder.embed_batch(batch)
    return (time.perf_counter() - t) / 16 * photos
