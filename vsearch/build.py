"""The build stage: catalog rows -> embeddings (cached) -> a new index generation, published
atomically.

``vsearch.embeddings.pipeline`` turns the rows into vectors (decode workers ahead of the model,
the embedding cache, Ray for the misses, or imported vectors); this module checks the rows,
runs the learning step (``vsearch.learn``: adaptation, whitening, DBA, the verdict) on those
vectors and hands them to ``vsearch.store`` to write and publish. Bad rows are reported and
skipped; nothing is written over the live index until the new one is complete.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vsearch.catalog.rows import Catalog, CatalogRow, RowProblem, read_catalog
from vsearch.embeddings.cache import EmbeddingCache
from vsearch.embeddings.pipeline import (
    ProgressCallback,
    embed_rows,
    imported_rows,
    open_matrix,
    train_pair_vectors,
)
from vsearch.embeddings.tuned_model import manifest_info
from vsearch.errors import CatalogError, VsearchError
from vsearch.store import generations as store
from vsearch.store.lock import exclusive_build

if TYPE_CHECKING:
    from vsearch.embedders import Embedder

# From this many catalog images on, a build of a sharded IVF type (ivf, ivfpq, ivfpq-fs) keeps the
# catalog's vectors in a float32 file on disk (memory-mapped, removed after the build) instead of
# in memory, and every step that can goes a shard at a time (``sharded_index.SHARD_VECTORS``):
# below it the whole matrix is small and RAM is faster. A Ray build of that size keeps the vectors
# it makes only in Parquet shards (``pipeline.SHARDS_DIR``), not in the SQLite cache as well.
ON_DISK_MIN_VECTORS = 100_000
SPILL_PREFIX = ".tmp-vectors-"


@dataclass
class BuildReport:
    """What a build did, for the CLI summary and for callers."""

    index_dir: Path
    generation: str
    model: str
    products: int
    images: int
    embedded: int  # images run through the model in this build
    reused: int  # images whose embedding came from the cache
    removed_products: int  # products in the previous index that are gone now
    problems: list[RowProblem]
    seconds: float
    embed_seconds: float
    index_type: str
    embedder: Any = field(default=None, repr=False)
    # the manifest's "incremental": updated or why not
    incremental: dict[str, Any] = field(default_factory=dict)
    # "ray": actors, worker pids and hosts, shards folder
    engine: dict[str, Any] = field(default_factory=dict)

    @property
    def skipped(self) -> list[RowProblem]:
        return [p for p in self.problems if p.fatal]

    @property
    def warnings(self) -> list[RowProblem]:
        return [p for p in self.problems if not p.fatal]

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def build_index(
    catalog: str | os.PathLike | Catalog,
    index_dir: str | os.PathLike = "index/default",
    *,
    model: str = "clip",
    pretrained: str | None = None,
    embedder: Embedder | None = None,
    precision: str = "auto",
    index_type: str = "auto",
    batch_size: int = 32,
    workers: int | None = None,
    strict: bool = False,
    allow_outside_paths: bool = False,
    fetch_policy: Any = None,
    progress: ProgressCallback | None = None,
    embeddings: str | os.PathLike | np.ndarray | None = None,
    whitening: bool | Mapping[str, Any] | None = None,
    dba: Mapping[str, Any] | None = None,
    query_defaults: Mapping[str, Any] | None = None,
    calibrate_threshold: bool = True,
    adapt: str = "auto",
    train_pairs: str | os.PathLike | None = None,
    engine: str = "local",
    ray_address: str | None = None,
    ray_actors: int | None = None,
    tuned: str = "auto",
) -> BuildReport:
    """Build or incrementally update the index in ``index_dir`` from a catalog CSV or image folder.

    Only images not already embedded by this model are run through it; products no longer in
    the catalog disappear. With ``strict`` any bad row aborts the build before the model loads.
    With ``embeddings`` (a .npy / Parquet file, see ``vsearch.embeddings.imported``) no image is
    read and no model runs: ``model``/``pretrained`` only name the model the vectors came from.

    Retrieval-quality options (None = the measured defaults in ``vsearch.learn.transforms`` and
    ``vsearch.query_options``): ``whitening`` - PCA-whitening fitted on this catalog's vectors
    (True/False or {"power", "shrinkage", "components"}); ``dba`` - database-side augmentation {"k",
    "alpha"} ({"k": 0} = off); ``query_defaults`` - what searches use unless told otherwise ("tta",
    "query_expansion", "product_scoring"); ``calibrate_threshold`` - learn when a result may be
    called a "close match" (manifest ``verdict``; False = the index gives no verdict).

    Learning from the shop (``vsearch.learn.fit``): ``adapt`` - "auto" learns a projection of the
    vectors from the catalog's multi-image products (and ``train_pairs``), refit only when what
    it learns from changed by more than ``learn.REFIT_FRACTION``; "refit" always refits; "off"
    turns it off. ``train_pairs`` - a CSV of ``image,product_id`` (confirmed shopper photo ->
    the product it shows); its photos are embedded with the index's model (so they need its
    weights even with ``embeddings``), never enter the catalog, and bad or unknown rows are
    reported like catalog rows ("train pairs row N").

    ``tuned``: "auto" embeds with the model ``vsearch tune`` fitted to this index
    (``vsearch.embeddings.tuned_model``), "off" with the base model. ``engine="ray"`` embeds the
    cache misses on a Ray cluster (``vsearch.embeddings.ray_engine``; at ``ray_address``, default
    $RAY_ADDRESS or a Ray started here, with ``ray_actors`` model actors) and also writes their
    vectors as Parquet shards in ``<index_dir>/embeddings/``.
    """
    if engine not in ("local", "ray"):
        raise VsearchError(f"engine must be 'local' or 'ray'; got {engine!r}")
    started = time.perf_counter()
    cat = (
        catalog
        if isinstance(catalog, Catalog)
        else read_catalog(catalog, allow_outside_paths=allow_outside_paths)
    )
    problems = list(cat.problems)
    _raise_if_strict(strict, problems, cat)
    if not cat.rows:
        raise CatalogError(_no_rows_message(cat, problems))
    store.choose_index_type(len(cat.rows), index_type)  # validate before any heavy work

    index_dir = Path(index_dir)
    on_disk = index_type in store.SHARDED_TYPES and len(cat.rows) >= ON_DISK_MIN_VECTORS
    if on_disk and dba is not None and int(dict(dba).get("k", 0)) > 0:
        raise VsearchError(
            "DBA (--dba) rewrites every vector from its neighbours, so it needs them all in "
            "memory: not "
            f"available for an {index_type} build of {ON_DISK_MIN_VECTORS:,} images or more; build "
            "without --dba"
        )
    with exclusive_build(index_dir), _spill_folder(index_dir, on_disk) as spill:
        if embedder is None and embeddings is not None:
            from vsearch.embeddings.imported import model_identity

            # name, fingerprint, dim: no weights loaded
            embedder = model_identity(model, pretrained)
        elif embedder is None:
            from vsearch.embeddings.tuned_model import build_embedder

            embedder = build_embedder(
                index_dir, model, pretrained, precision=precision, tuned=tuned
            )
        job: dict[str, Any] = {}
        if engine == "ray" and embeddings is None:
            from vsearch.embeddings.ray_engine import RayOptions, require_ray

            require_ray()
            job = {
                "options": RayOptions(
                    address=ray_address, actors=ray_actors, batch_size=batch_size
                ),
                "model": getattr(embedder, "spec", model),
                "pretrained": getattr(embedder, "pretrained", pretrained),
                "precision": getattr(embedder, "precision", precision),
            }
        with (
            _cache_errors(index_dir / store.CACHE_FILE),
            EmbeddingCache(index_dir / store.CACHE_FILE) as cache,
        ):
            embed_started = time.perf_counter()
            kept, vectors, embedded, reused, image_problems = (
                imported_rows(cat, embeddings, embedder, progress, spill)
                if embeddings is not None
                else embed_rows(
                    cat.rows,
                    embedder,
                    cache,
                    index_dir=index_dir,
                    batch_size=batch_size,
                    workers=workers,
                    fetch_policy=fetch_policy,
                    progress=progress,
                    job=job,
                    spill=spill,
                )
            )
            shopper = None
            if train_pairs is not None:
                shopper, pair_problems, model = train_pair_vectors(
                    train_pairs,
                    {row.product_id for row, _ in kept},
                    embedder,
                    cache,
                    index_dir=index_dir,
                    batch_size=batch_size,
                    workers=workers,
                    fetch_policy=fetch_policy,
                    precision=precision,
                )
                problems.extend(pair_problems)
                embedder = (
                    model
                    if embeddings is not None and not hasattr(embedder, "embed_images")
                    else embedder
                )
            embed_seconds = time.perf_counter() - embed_started
        problems.extend(image_problems)
        _raise_if_strict(strict, problems, cat)

        products, images, left_out = _products_and_images(cat, kept)
        problems.extend(left_out)
        if not images:
            raise CatalogError(_no_rows_message(cat, problems))
        chosen_type, fallback = store.pq_fallback(
            store.choose_index_type(len(images), index_type), len(images)
        )
        # too few images to train PQ codebooks: exact search, said in the summary and manifest
        if fallback:
            problems.append(RowProblem(row=0, reason=fallback, fatal=False))
        # a malformed CURRENT stops the build here
        name = store.read_current(index_dir, missing_ok=True)
        live = index_dir / name if name is not None and (index_dir / name).is_dir() else None
        previous = _previous_product_ids(live)
        manifest = {
            "model": {
                "name": embedder.name,
                "spec": getattr(embedder, "spec", embedder.name),
                "pretrained": getattr(embedder, "pretrained", None),
                "fingerprint": embedder.fingerprint,
                "supports_text": bool(embedder.supports_text),
                "precision_at_build": getattr(embedder, "precision", "fp32"),
                **manifest_info(embedder),
            },
            "dim": int(embedder.dim),
            "catalog": str(cat.source),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build": {
                "embedded": embedded,
                "reused": reused,
                "skipped_rows": sum(p.fatal for p in problems),
            },
        }
        if fallback:
            manifest["index_type_fallback"] = {"requested": index_type, "reason": fallback}
        tmp = store.new_generation_dir(index_dir)
        try:
            vectors = _quality_postprocess(
                tmp,
                vectors,
                images,
                manifest,
                whitening=whitening,
                dba=dba,
                query_defaults=query_defaults,
                calibrate=calibrate_threshold,
                adapt=adapt,
                shopper=shopper,
                embedder=embedder,
                previous=live,
                spill=spill,
            )
            if shopper is not None:
                manifest["train_pairs"] = store.write_train_pairs(tmp, shopper[2])
            update, quantizer = _incremental_update(live, vectors, images, manifest, chosen_type)
            store.write_generation(
                tmp,
                vectors=vectors,
                images=images,
                products=products,
                manifest=manifest,
                index_type=chosen_type,
                prebuilt=update,
                quantizer=quantizer,
            )
            final = store.publish_generation(index_dir, tmp)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise VsearchError(
                f"could not write the index in {index_dir}: {e}; the previous index is unchanged"
            ) from e
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    removed = len(previous - {p.product_id for p in products}) if previous else 0
    return BuildReport(
        index_dir=index_dir,
        generation=final.name,
        model=embedder.name,
        products=len(products),
        images=len(images),
        embedded=embedded,
        reused=reused,
        removed_products=removed,
        problems=problems,
        seconds=time.perf_counter() - started,
        embed_seconds=embed_seconds,
        index_type=chosen_type,
        # imported: no model was loaded
        embedder=embedder if hasattr(embedder, "embed_images") else None,
        incremental=dict(manifest.get("incremental") or {}),
        engine=job.get("report", {}),
    )


def _quality_postprocess(
    tmp: Path,
    raw: np.ndarray,
    images: list,
    manifest: dict[str, Any],
    *,
    whitening: bool | Mapping[str, Any] | None,
    dba: Mapping[str, Any] | None,
    query_defaults: Mapping[str, Any] | None,
    calibrate: bool,
    adapt: str,
    shopper: tuple[np.ndarray, list[str], list[str]] | None,
    embedder: Any,
    previous: Path | None,
    spill: Path | None = None,
) -> np.ndarray:
    """Catalog adaptation, whitening and DBA on the catalog vectors (stored beside the index),
    query defaults and the "close match" verdict, all recorded in the manifest. Returns the
    vectors to index; the embedding cache keeps the raw model vectors, so changing these options
    re-embeds nothing. With ``spill`` (a folder, see ON_DISK_MIN_VECTORS) ``raw`` is a memory map
    and the projected (or whitened) vectors go to another one, a shard at a time; fitting the
    projection and the verdict read it a block of rows at a time, whitening is fitted on a
    sample (store.TRAIN_SAMPLE_MAX rows); DBA, which needs every vector, is refused there."""
    from vsearch.learn import fit as learn
    from vsearch.learn import transforms as post
    from vsearch.learn import verdict
    from vsearch.learn.calibration import held_out_recall
    from vsearch.query_options import resolve_query_defaults

    product_ids = [im.product_id for im in images]
    w_opts = post.resolve_whitening(whitening)
    d_opts = post.resolve_dba(dba)
    q_opts = resolve_query_defaults(query_defaults)
    settings = learn.query_settings(q_opts)  # what the verdict is calibrated with and applies to
    shopper_vectors, shopper_labels, shopper_keys = (
        shopper if shopper is not None else (None, [], [])
    )
    adaptation = learn.adapt(
        tmp,
        raw,
        product_ids,
        [im.content_hash or im.source for im in images],
        mode=adapt,
        model_fingerprint=manifest["model"]["fingerprint"],
        previous=previous,
        shopper_vectors=shopper_vectors,
        shopper_labels=shopper_labels,
        shopper_keys=shopper_keys,
    )
    # simulated shopper photos: made at most once, for the shopper check and the verdict
    simulated = None
    if adaptation.record.get("state") == "fitted" and (
        shopper_vectors is None or len(shopper_vectors) == 0
    ):
        simulated = verdict.simulated_photos(embedder, images, manifest, tta=settings["tta"])
        if simulated is not None:
            check = learn.shopper_check(raw, product_ids, adaptation.projection, simulated)
            adaptation.record["shopper_check"] = check
            if check["rejected"]:
                adaptation = learn.reject(tmp, adaptation, check)
    manifest["adaptation"] = adaptation.record
    vectors = (
        raw
        if adaptation.projection is None
        else _mapped(adaptation.projection.apply, raw, spill, "adapted")
    )
    record: dict[str, Any] = {"whitening": None, "dba": None}
    auto = w_opts is not None and w_opts.pop("auto", False)
    whitener = None
    if w_opts is not None and len(vectors) >= post.MIN_WHITENING_VECTORS:
        if spill is not None:  # fitted on the IVF training sample
            from vsearch.store.sharded import training_sample

            w = post.fit_whitening(training_sample(vectors, store.TRAIN_SAMPLE_MAX), **w_opts)
        else:
            w = post.fit_whitening(vectors, **w_opts)
        whitened = _mapped(w.apply, vectors, spill, "whitened")
        keep = True
        if auto:  # keep it only if it measurably helps this catalog's own held-out views
            before, n = held_out_recall(vectors, np.asarray(product_ids))
            after, _ = held_out_recall(whitened, np.asarray(product_ids))
            keep = n >= post.AUTO_MIN_HELD_OUT and after >= before + post.AUTO_MIN_GAIN
            record["whitening_auto"] = {
                "held_out_images": n,
                "r1_raw": round(before, 4),
                "r1_whitened": round(after, 4),
                "kept": keep,
            }
        if keep:
            vectors, whitener = whitened, w
            record["whitening"] = w.save(tmp)
    elif w_opts is not None:
        record["whitening_skipped"] = (
            f"{len(vectors)} images; whitening needs at least {post.MIN_WHITENING_VECTORS}"
        )
    if d_opts["k"] > 0:
        vectors = post.database_augment(vectors, **d_opts)
        record["dba"] = d_opts
    manifest["postprocess"] = record
    manifest["query_defaults"] = q_opts
    if not calibrate:
        manifest["verdict"] = {
            "threshold": None,
            "reason": "no verdict: turned off at build (--no-threshold)",
        }
        return vectors
    has_pairs = shopper_vectors is not None and len(shopper_vectors) > 0
    reused = learn.reuse_verdict(
        previous,
        manifest,
        [store.content_key(im.product_id, im.source, im.content_hash) for im in images],
        train_pairs=has_pairs,
        settings=settings,
    )
    if reused is not None:  # a small change in the same vector space: the calibration still holds
        manifest["verdict"] = reused
        return vectors
    withheld = learn.settings_withheld(settings, simulated=True, train_pairs=has_pairs)
    if simulated is None and not withheld:
        simulated = verdict.simulated_photos(embedder, images, manifest, tta=settings["tta"])
    withheld = withheld or learn.settings_withheld(
        settings, simulated=simulated is not None, train_pairs=has_pairs
    )
    if withheld:
        manifest["verdict"] = {"threshold": None, "reason": withheld, "query_settings": settings}
        return vectors
    calibrated = verdict.calibrate(
        raw,
        product_ids,
        adapted=adaptation.projection is not None,
        index_vectors=vectors,
        post=whitener.apply if whitener is not None else None,
        simulated=simulated,
        settings=settings,
        shopper=(shopper_vectors, shopper_labels) if has_pairs else None,
    )
    manifest["verdict"] = {**calibrated.to_dict(), "query_settings": settings}
    return vectors


def _mapped(
    fn: Callable[[np.ndarray], np.ndarray], vectors: np.ndarray, spill: Path | None, name: str
) -> np.ndarray:
    """``fn`` (a row-wise map: a learned projection, whitening) of every vector: in memory, or with
    ``spill`` a shard at a time into a memory map ``<spill>/<name>.f32.npy``."""
    if spill is None:
        return fn(vectors)
    from vsearch.store.sharded import map_shards

    return map_shards(
        fn, vectors, open_matrix(spill / f"{name}.f32.npy", len(vectors), vectors.shape[1])
    )


def _incremental_update(
    live: Path | None, vectors: np.ndarray, images: list, manifest: dict[str, Any], index_type: str
):
    """The live index updated in place of a full FAISS build when little changed
    (``vsearch.store.incremental``); records what was done in the manifest's ``incremental`` entry.
    Returns (prebuilt index or None, the previous trained IVF quantizer to build on or None); (None,
    None) = build afresh."""
    from vsearch.store import incremental as incremental

    if index_type in incremental.QUANTIZER_REUSE_TYPES:
        quantizer, why = incremental.reusable_quantizer(live, images, manifest, index_type)
        if quantizer is not None:
            manifest["incremental"] = {
                k: v for k, v in quantizer.items() if k not in ("factory", "trained_index")
            }
            return None, quantizer
    else:
        update, why = incremental.try_update(live, vectors, images, manifest, index_type)
        if update is not None:
            manifest["incremental"] = update.record
            return (update.index, update.factory, update.vids), None
    manifest["incremental"] = {"full_build": why, "changed_since_full": 0}
    return None, None


# ---------------------------------------------------------------- assembling the index


@contextmanager
def _spill_folder(index_dir: Path, enabled: bool) -> Iterator[Path | None]:
    """A private folder for the build's on-disk vector matrices (see ON_DISK_MIN_VECTORS), removed
    when the build ends; one a killed build left behind is removed by the next publish."""
    if not enabled:
        yield None
        return
    import secrets

    path = index_dir / f"{SPILL_PREFIX}{secrets.token_hex(4)}"
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _products_and_images(cat: Catalog, kept: list[tuple[CatalogRow, str]]):
    """Products with at least one usable image, and one image record per kept row."""
    with_images = {row.product_id for row, _ in kept}
    products = [product for pid, product in cat.products.items() if pid in with_images]
    images = [
        store.ImageRecord(product_id=row.product_id, source=row.image, row=row.row, content_hash=h)
        for row, h in kept
    ]
    left_out = [
        RowProblem(
            row=0, reason=f"product {pid!r} has no usable image and was left out", fatal=False
        )
        for pid in cat.products
        if pid not in with_images
    ]
    return products, images, left_out


def _previous_product_ids(previous: Path | None) -> set[str]:
    if previous is None:
        return set()
    try:
        db = store.open_products_db(previous)
        try:
            return {r[0] for r in db.execute("SELECT product_id FROM products")}
        finally:
            db.close()
    except (VsearchError, sqlite3.Error):
        return set()


def _raise_if_strict(strict: bool, problems: list[RowProblem], cat: Catalog) -> None:
    fatal = [p for p in problems if p.fatal]
    if strict and fatal:
        lines = "; ".join(f"row {p.row}: {p.reason}" for p in fatal[:5])
        more = f" (and {len(fatal) - 5} more)" if len(fatal) > 5 else ""
        raise CatalogError(
            f"{cat.source}: {len(fatal)} bad row(s) and --strict is on: {lines}{more}"
        )


def _no_rows_message(cat: Catalog, problems: list[RowProblem]) -> str:
    fatal = [p for p in problems if p.fatal]
    detail = "; ".join(f"row {p.row}: {p.reason}" for p in fatal[:5])
    return f"{cat.source}: no usable catalog rows" + (f" ({detail})" if detail else "")


@contextmanager
def _cache_errors(path: Path):
    """A full disk or a damaged cache file is one clear error, not an sqlite3 traceback."""
    try:
        yield
    except sqlite3.Error as e:
        raise VsearchError(
            f"embedding cache {path} failed ({e}); the previous index is unchanged. Free disk "
            "space, "
            "or delete that file to start the cache afresh (everything will be re-embedded)"
        ) from e
