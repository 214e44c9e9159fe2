"""Bring your own embeddings: index a catalog whose images were embedded elsewhere (a GPU box,
Spark, Ray).

Two things must line up before a single vector is trusted: which catalog image each vector
belongs to, and which model made it (queries are embedded by that model later).

Alignment. The catalog is read as usual (``read_catalog``), and its *good* rows, in order,
after ``a|b`` image cells are expanded and repeated (product_id, image) pairs dropped, are
what vectors are matched to (``expected_rows`` lists them). Rows the catalog reports as bad
have no slot. Two ways to match:

* by position - a ``.npy`` array, or a Parquet file with only a vector column: exactly one
  vector per good row, in order. A Parquet ``product_id`` column, if present, is checked
  row by row.
* by key - a Parquet file with an ``image`` column (and optionally ``product_id``): each good
  catalog row takes the vector whose key matches; extra vectors are ignored, so an export
  of a larger catalog works. Relative image paths resolve against the catalog's folder,
  like the catalog's own.

Model. ``model_identity`` works out the name, fingerprint and dimension the index records,
without loading CLIP weights: a pretrained tag's fingerprint is its name, a checkpoint file's
is the hash of its bytes - the same values ``load_embedder`` computes, so a later
``ProductIndex.load`` loads that model for queries and checks it. Other models (EfficientNet,
hf-hub) are cheap or need their files anyway, so they are loaded once to read these values.

Vectors must be finite floats (float16/32/64) of the model's dimension; they are stored
L2-normalised (un-normalised input is normalised, not refused - many exporters skip it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vsearch.errors import EmbeddingsImportError, ModelError

if TYPE_CHECKING:
    from vsearch.catalog.rows import Catalog, CatalogRow

VECTOR_COLUMNS = ("embedding", "vector")
SUFFIXES = (".npy", ".parquet", ".pq")
_NORM_TOLERANCE = 1e-3  # |norm - 1| above this counts as "not normalised" in the report


@dataclass(frozen=True)
class ModelIdentity:
    """What an index records about the model that made its vectors (no weights loaded)."""

    name: str
    spec: str
    pretrained: str | None
    fingerprint: str
    dim: int
    supports_text: bool
    precision: str = "imported"


@dataclass(frozen=True)
class ImportedEmbeddings:
    """Vectors aligned to ``read_catalog(...).rows`` order, float32, unit length."""

    vectors: np.ndarray
    source: Path
    aligned_by: str  # "position" or "key"
    renormalised: int  # how many input vectors were not unit length
    unused: int  # vectors in the file that matched no catalog row (key alignment only)


def expected_rows(catalog: Catalog) -> list[tuple[str, str]]:
    """(product_id, image) of every slot, in order: what a positional file must follow."""
    return [(r.product_id, r.image) for r in catalog.rows]


def load_embeddings(
    path: str | os.PathLike | np.ndarray, catalog: Catalog, *, dim: int | None = None
) -> ImportedEmbeddings:
    """Read, validate, align and normalise precomputed vectors for ``catalog``'s good rows.

    ``path``: a .npy or Parquet file, an array, or a folder of Parquet files (read in name order,
    as if one file). Raises EmbeddingsImportError naming the file and the row/value at fault.
    """
    if isinstance(path, np.ndarray):
        source = Path("<array>")
        vectors, keys = _check_matrix(path, source), None
    else:
        source = Path(path)
        if source.is_dir():  # a folder of Parquet shards: read as one file, into memory
            if dim is None:
                dim = next(
                    _parquet_batches(sorted(source.glob("*.parquet"))[:1], 1),
                    (None, np.empty((0, 0)), None),
                )[1].shape[1]
            return load_embeddings_into(
                source, catalog, np.empty((len(catalog.rows), dim), dtype=np.float32)
            )
        if not source.is_file():
            raise EmbeddingsImportError(f"embeddings file {source} does not exist or is not a file")
        suffix = source.suffix.lower()
        if suffix == ".npy":
            vectors, keys = _read_npy(source), None
        elif suffix in (".parquet", ".pq"):
            vectors, keys = _read_parquet(source)
        else:
            raise EmbeddingsImportError(
                f"embeddings file {source} has suffix {suffix or '(none)'!r}; accepted: .npy "
                "(float array [rows, dim]) or .parquet (a list column 'embedding' or 'vector')"
            )
    if dim is not None and vectors.shape[1] != dim:
        raise EmbeddingsImportError(
            f"{source}: vectors have dimension {vectors.shape[1]}, but the model's embeddings have "
            f"dimension {dim}; "
            "check --model/--pretrained name the model the vectors came from"
        )
    rows = catalog.rows
    if keys is not None and "image" in keys:
        vectors, unused = _align_by_key(vectors, keys, catalog, source)
        how = "key"
    else:
        if len(vectors) != len(rows):
            raise EmbeddingsImportError(
                f"{source}: {len(vectors)} vectors but the catalog {catalog.source} has "
                f"{len(rows)} usable image rows "
                f"({len(catalog.fatal_problems)} bad rows have no vector slot); give one vector "
                "per usable row in "
                "catalog order, or a Parquet file with 'image' (and 'product_id') columns to match "
                "by key"
            )
        if keys is not None and "product_id" in keys:
            for i, (pid, row) in enumerate(zip(keys["product_id"], rows)):
                if pid != row.product_id:
                    raise EmbeddingsImportError(
                        f"{source}: vector {i} is for product_id {pid!r}, but catalog row "
                        f"{row.row} "
                        f"(image {row.image}) is product {row.product_id!r}; vectors must follow "
                        "catalog order"
                    )
        how, unused = "position", 0
    vectors, renormalised = _normalise(vectors, source, rows)
    return ImportedEmbeddings(
        vectors=vectors, source=source, aligned_by=how, renormalised=renormalised, unused=unused
    )


def load_embeddings_into(
    path: str | os.PathLike | np.ndarray,
    catalog: Catalog,
    out: np.ndarray,
    *,
    batch_rows: int = 65536,
) -> ImportedEmbeddings:
    """``load_embeddings`` for catalogs bigger than memory: the vectors are written into ``out``
    (a [rows, dim] float32 array, normally a memory map on disk) ``batch_rows`` at a time, so no
    step holds more than one batch. ``path`` may also be a folder of Parquet files (read in name
    order, as if one file: Ray's ``embeddings/part-*.parquet``, or any exporter's shards).
    Same checks and messages as ``load_embeddings``."""
    rows = catalog.rows
    dim = out.shape[1]
    if isinstance(path, np.ndarray):
        source = Path("<array>")
        batches = _array_batches(_check_matrix(path, source), batch_rows)
    else:
        source = Path(path)
        files = sorted(source.glob("*.parquet")) if source.is_dir() else [source]
        if source.is_dir() and not files:
            raise EmbeddingsImportError(f"embeddings folder {source} holds no .parquet files")
        if not source.is_dir() and not source.is_file():
            raise EmbeddingsImportError(f"embeddings file {source} does not exist or is not a file")
        suffix = source.suffix.lower() if source.is_file() else ".parquet"
        if suffix == ".npy":
            batches = _array_batches(_read_npy(source), batch_rows)
        elif suffix in (".parquet", ".pq"):
            batches = _parquet_batches(files, batch_rows)
        else:
            raise EmbeddingsImportError(
                f"embeddings file {source} has suffix {suffix or '(none)'!r}; accepted: .npy "
                "(float array [rows, dim]) or .parquet (a list column 'embedding' or 'vector')"
            )
    root = Path(catalog.root)
    slots: dict[Any, list[int]] | None = None
    filled = np.zeros(len(rows), dtype=bool)
    seen: dict[Any, int] = {}
    done = renormalised = unused = 0
    how = "position"
    for where, vectors, keys in batches:
        if vectors.shape[1] != dim:
            raise EmbeddingsImportError(
                f"{where}: vectors have dimension {vectors.shape[1]}, but the model's embeddings "
                f"have dimension {dim}; "
                "check --model/--pretrained name the model the vectors came from"
            )
        if keys is not None and "image" in keys:
            how = "key"
            with_pid = "product_id" in keys
            if slots is None:
                slots = {}
                for n, row in enumerate(rows):
                    slots.setdefault(
                        (row.product_id if with_pid else None, _normalise_image(row.image, root)),
                        [],
                    ).append(n)
            picks, targets = [], []
            for i, image in enumerate(keys["image"]):
                key = (keys["product_id"][i] if with_pid else None, _normalise_image(image, root))
                if key in seen:
                    raise EmbeddingsImportError(
                        f"{where}: rows {seen[key]} and {done + i} both give a vector for image "
                        f"{image!r}"
                        + (f" of product {key[0]!r}" if with_pid else "")
                        + "; keep one vector per (product_id, image)"
                    )
                seen[key] = done + i
                for n in slots.get(key, ()):
                    picks.append(i)
                    targets.append(n)
            unused += len(keys["image"]) - len(set(picks))
            picks_a, targets_a = (
                np.asarray(picks, dtype=np.int64),
                np.asarray(targets, dtype=np.int64),
            )
        else:
            if done + len(vectors) > len(rows):
                raise EmbeddingsImportError(
                    f"{source}: more vectors than the catalog {catalog.source} has usable image "
                    f"rows ({len(rows)}); "
                    "give one vector per usable row in catalog order, or a Parquet file with "
                    "'image' (and "
                    "'product_id') columns to match by key"
                )
            if keys is not None and "product_id" in keys:
                for i, pid in enumerate(keys["product_id"]):
                    row = rows[done + i]
                    if pid != row.product_id:
                        raise EmbeddingsImportError(
                            f"{where}: vector {done + i} is for product_id {pid!r}, but catalog "
                            f"row {row.row} "
                            f"(image {row.image}) is product {row.product_id!r}; vectors must "
                            "follow catalog order"
                        )
            picks_a = np.arange(len(vectors), dtype=np.int64)
            targets_a = np.arange(done, done + len(vectors), dtype=np.int64)
        if len(picks_a):
            chosen, extra = _normalise(vectors[picks_a], where, [rows[n] for n in targets_a])
            renormalised += extra
            # rows in file order: forward writes to the map
            order = np.argsort(targets_a, kind="stable")
            out[targets_a[order]] = chosen[order]
            filled[targets_a] = True
        done += len(vectors)
    missing = [rows[n] for n in np.flatnonzero(~filled)[:3]]
    if how == "position" and done != len(rows):
        raise EmbeddingsImportError(
            f"{source}: {done} vectors but the catalog {catalog.source} has {len(rows)} usable "
            "image rows "
            f"({len(catalog.fatal_problems)} bad rows have no vector slot); give one vector per "
            "usable row in "
            "catalog order, or a Parquet file with 'image' (and 'product_id') columns to match by "
            "key"
        )
    if missing:
        shown = "; ".join(f"row {r.row} {r.product_id!r} {r.image}" for r in missing)
        count = int((~filled).sum())
        more = f" (and {count - 3} more)" if count > 3 else ""
        raise EmbeddingsImportError(
            f"{source}: no vector for {count} catalog image(s): {shown}{more}; its 'image' column "
            "must name "
            "each catalog image as the catalog does (relative to the catalog's folder, or absolute)"
        )
    if hasattr(out, "flush"):
        out.flush()
    return ImportedEmbeddings(
        vectors=out, source=source, aligned_by=how, renormalised=renormalised, unused=unused
    )


def _array_batches(arr: np.ndarray, batch_rows: int):
    for start in range(0, len(arr), batch_rows):
        yield Path("<array>"), np.asarray(arr[start : start + batch_rows]), None


def _parquet_batches(files: list[Path], batch_rows: int):
    """(file, vectors, keys) of each batch of rows of each file, in order."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise EmbeddingsImportError(
            f"{files[0]}: reading Parquet needs pyarrow (pip install 'vsearch[parquet]'), or save "
            "the vectors as .npy"
        ) from None
    for path in files:
        try:
            f = pq.ParquetFile(str(path))
        except Exception as e:
            raise EmbeddingsImportError(f"{path}: cannot read as Parquet ({e})") from None
        first = 0
        for batch in f.iter_batches(batch_size=batch_rows):
            vectors, keys = _table_arrays(pa.Table.from_batches([batch]), path, first)
            first += len(vectors)
            yield path, vectors, keys


# ---------------------------------------------------------------- readers


def _read_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode="r")
    except ValueError as e:
        raise EmbeddingsImportError(
            f"{path}: not a plain numeric .npy array ({e}); save with np.save(path, float32_array)"
        ) from None
    except (OSError, EOFError) as e:
        raise EmbeddingsImportError(f"{path}: cannot read as .npy ({e})") from None
    return _check_matrix(arr, path)


def _check_matrix(arr: np.ndarray, source: Path) -> np.ndarray:
    if arr.dtype.kind != "f" or arr.dtype.itemsize not in (2, 4, 8):
        raise EmbeddingsImportError(
            f"{source}: vectors have dtype {arr.dtype}; accepted: float16, float32 or float64"
        )
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise EmbeddingsImportError(
            f"{source}: expected a 2-D array [rows, dim], got shape {tuple(arr.shape)}"
        )
    return arr


def _read_parquet(path: Path) -> tuple[np.ndarray, dict[str, list[str]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise EmbeddingsImportError(
            f"{path}: reading Parquet needs pyarrow (pip install 'vsearch[parquet]'), or save the "
            "vectors as .npy"
        ) from None
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ...
        raise EmbeddingsImportError(f"{path}: cannot read as Parquet ({e})") from None
    return _table_arrays(table, path)


def _table_arrays(
    table: Any, path: Path, first_row: int = 0
) -> tuple[np.ndarray, dict[str, list[str]]]:
    """(vectors, {"image"/"product_id": values}) of a Parquet table, or of one batch of a file's
    rows that starts at row ``first_row`` (for the row numbers in errors)."""
    import pyarrow as pa

    column = next((c for c in VECTOR_COLUMNS if c in table.column_names), None)
    if column is None:
        raise EmbeddingsImportError(
            f"{path}: no vector column; expected one named "
            f"{' or '.join(repr(c) for c in VECTOR_COLUMNS)} "
            f"(columns found: {', '.join(table.column_names) or 'none'})"
        )
    col = table.column(column).combine_chunks()
    if not (
        pa.types.is_list(col.type)
        or pa.types.is_large_list(col.type)
        or pa.types.is_fixed_size_list(col.type)
    ):
        raise EmbeddingsImportError(
            f"{path}: column {column!r} has type {col.type}; expected a list of floats per row"
        )
    if col.null_count:
        first = first_row + col.is_null().to_numpy(zero_copy_only=False).nonzero()[0][0]
        raise EmbeddingsImportError(f"{path}: column {column!r} is empty (null) in row {first}")
    value_type = col.type.value_type
    if not pa.types.is_floating(value_type):
        raise EmbeddingsImportError(
            f"{path}: column {column!r} holds {value_type}; accepted: lists of float16/32/64"
        )
    if pa.types.is_fixed_size_list(col.type):
        dim = col.type.list_size
        flat = col.flatten().to_numpy(zero_copy_only=False)
        arr = flat.reshape(len(col), dim) if len(col) else np.zeros((0, dim), flat.dtype)
    else:
        offsets = col.offsets.to_numpy()
        lengths = np.diff(offsets)
        if len(lengths) and (lengths != lengths[0]).any():
            bad = int(np.flatnonzero(lengths != lengths[0])[0])
            raise EmbeddingsImportError(
                f"{path}: row {first_row + bad} of {column!r} has {lengths[bad]} values, row "
                f"{first_row} has {lengths[0]}; "
                "all vectors need one length"
            )
        dim = int(lengths[0]) if len(lengths) else 0
        flat = col.flatten().to_numpy(zero_copy_only=False)
        arr = flat.reshape(len(col), dim) if len(col) else np.zeros((0, max(dim, 1)), flat.dtype)
    keys = {}
    for name in ("image", "product_id"):
        if name in table.column_names:
            values = table.column(name).to_pylist()
            if any(v is None for v in values):
                raise EmbeddingsImportError(
                    f"{path}: column {name!r} has empty values (row "
                    f"{first_row + values.index(None)})"
                )
            keys[name] = [str(v) for v in values]
    return _check_matrix(arr, path), keys


# ---------------------------------------------------------------- alignment and checks


def _align_by_key(
    vectors: np.ndarray, keys: dict[str, list[str]], catalog: Catalog, source: Path
) -> tuple[np.ndarray, int]:
    """Pick, for every good catalog row, the vector whose (product_id, image) matches."""
    root = Path(catalog.root)
    with_pid = "product_id" in keys
    index: dict[Any, int] = {}
    for i, image in enumerate(keys["image"]):
        key = (keys["product_id"][i] if with_pid else None, _normalise_image(image, root))
        if key in index:
            raise EmbeddingsImportError(
                f"{source}: rows {index[key]} and {i} both give a vector for image {image!r}"
                + (f" of product {key[0]!r}" if with_pid else "")
                + "; keep one vector per (product_id, image)"
            )
        index[key] = i
    picks = np.empty(len(catalog.rows), dtype=np.int64)
    missing: list[CatalogRow] = []
    for n, row in enumerate(catalog.rows):
        key = (row.product_id if with_pid else None, _normalise_image(row.image, root))
        i = index.get(key)
        if i is None:
            missing.append(row)
        else:
            picks[n] = i
    if missing:
        shown = "; ".join(f"row {r.row} {r.product_id!r} {r.image}" for r in missing[:3])
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise EmbeddingsImportError(
            f"{source}: no vector for {len(missing)} catalog image(s): {shown}{more}; its 'image' "
            "column must name "
            "each catalog image as the catalog does (relative to the catalog's folder, or absolute)"
        )
    unused = len(vectors) - len(set(picks.tolist()))
    return np.asarray(vectors[picks]), unused


def _normalise_image(image: str, root: Path) -> str:
    if image.startswith(("http://", "https://")):
        return image
    path = Path(image)
    if not path.is_absolute():
        path = root / path
    return os.path.realpath(path)


def _normalise(vectors: np.ndarray, source: Path, rows: list[CatalogRow]) -> tuple[np.ndarray, int]:
    out = np.array(vectors, dtype=np.float32, order="C", copy=True)
    finite = np.isfinite(out).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        where = ", ".join(
            f"vector {i} (catalog row {rows[i].row})" for i in bad[:3] if i < len(rows)
        )
        raise EmbeddingsImportError(
            f"{source}: {len(bad)} vector(s) contain NaN or infinity: {where}"
        )
    norms = np.linalg.norm(out, axis=1)
    zero = np.flatnonzero(norms < 1e-12)
    if len(zero):
        raise EmbeddingsImportError(
            f"{source}: {len(zero)} vector(s) are all zeros (e.g. vector {zero[0]}, catalog row "
            f"{rows[zero[0]].row}); "
            "a zero vector matches nothing"
        )
    renormalised = int((np.abs(norms - 1.0) > _NORM_TOLERANCE).sum())
    out /= norms[:, None]
    return out, renormalised


# ---------------------------------------------------------------- model identity


def model_identity(model: str = "clip", pretrained: str | None = None) -> ModelIdentity:
    """Name, fingerprint and dimension ``load_embedder(model, pretrained)`` would have.

    CLIP with a pretrained tag or a checkpoint file: computed from the config and the file's
    bytes, no weights loaded (a tag needs no weights at all). Anything else is loaded once.
    """
    from vsearch.embedders import lookup
    from vsearch.embedders.clip import DEFAULT_CLIP_ARCH, DEFAULT_CLIP_PRETRAINED, parse_clip_spec

    spec = (model or "").strip()
    if spec and lookup(spec).name == "clip":  # open_clip names too; "hf-hub:" has its own entry
        arch, tag = parse_clip_spec(spec, pretrained)
        if not arch.startswith("hf-hub:"):
            return _clip_identity(
                arch,
                tag if tag is not None or arch != DEFAULT_CLIP_ARCH else DEFAULT_CLIP_PRETRAINED,
            )
    from vsearch.embedders import load_embedder

    emb = load_embedder(model, pretrained, precision="fp32")
    name = emb.name
    return ModelIdentity(
        name=name,
        spec=getattr(emb, "spec", name),
        pretrained=getattr(emb, "pretrained", None),
        fingerprint=emb.fingerprint,
        dim=int(emb.dim),
        supports_text=bool(emb.supports_text),
    )


def _clip_identity(arch: str, pretrained: str | None) -> ModelIdentity:
    import open_clip

    from vsearch.embedders.clip import weights_identity

    if pretrained is None:
        raise ModelError(
            f"model {arch} needs weights: name them with --pretrained (a tag or a checkpoint file)"
        )
    cfg = open_clip.get_model_config(arch)
    if not cfg or "embed_dim" not in cfg:
        raise ModelError(f"open_clip has no config for {arch}")
    name, fingerprint, _ = weights_identity(
        arch, pretrained, open_clip.list_pretrained_tags_by_model(arch)
    )
    return ModelIdentity(
        name=name,
        spec=name,
        pretrained=None,
        fingerprint=fingerprint,
        dim=int(cfg["embed_dim"]),
        supports_text=True,
    )
