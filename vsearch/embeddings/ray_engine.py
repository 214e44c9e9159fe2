"""Embedding on a Ray cluster: the cache misses of a build go to Ray Data, vectors come back.

The driver (``build``) still reads each image once to hash it, because the hash is the cache
key; only images whose embedding is not cached are shipped, as (key, path) - for catalog URLs
the path of the driver's download (so the index folder must be shared too). Ray Data reads the files
in light tasks (no CPU reserved: on a small machine a reserved CPU per read task starves the model,
ray issue 44687), and an actor pool embeds them: each actor loads the model once, decodes in a few
threads and runs torch on the CPUs Ray gave it. Vectors stream back to the driver, which writes them
to Parquet shards (and, below ``build.ON_DISK_MIN_VECTORS``, to the same SQLite cache as a local
build; above it the shards are the cache) keyed by content hash - so a batch Ray runs twice (a
retried actor) is stored once - and the index is assembled as in a local build.

Images and ``--pretrained`` weights must be at the same path on every node (shared storage).
A worker that cannot load the model, or loads different weights, stops the build with its own
error. A worker that dies (killed, out of memory) is restarted by Ray and its batch run again, up
to ACTOR_MAX_RESTARTS restarts per actor and BATCH_MAX_RETRIES retries per batch (Ray Data's
default is no limit, so a batch that kills every worker that takes it would be retried forever);
past that the build fails with Ray's error.
Ray is an optional extra: ``pip install 'vsearch[ray]'``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import numpy as np

from vsearch.errors import ModelError, VsearchError

# a killed or OOM-killed model actor is restarted this often over the job, then the build fails
ACTOR_MAX_RESTARTS = 3
BATCH_MAX_RETRIES = 3  # a batch whose actor died is run again this often (the kill test needs 1)
# rows per read task: small enough to spread, big enough to amortise a task
ROWS_PER_READ_BLOCK = 64
TEST_EXIT_ONCE_ENV = "VSEARCH_TEST_RAY_EXIT_ONCE"  # tests only: see _maybe_die_for_test


@dataclass
class RayOptions:
    """Where and how wide to run: ``address`` None = $RAY_ADDRESS, else a Ray started on this
    machine."""

    address: str | None = None
    actors: int | None = None  # None = one per `cpus_per_actor` CPUs of the cluster
    cpus_per_actor: int | None = None  # None = all CPUs of the cluster / actors, at most 4
    batch_size: int = 32


@dataclass
class RayRun:
    """What the cluster did: for the build report and tests."""

    actors: int
    cpus_per_actor: int
    address: str = ""  # the cluster's GCS address
    worker_pids: set[int] = field(default_factory=set)
    hosts: set[str] = field(default_factory=set)
    batches: int = 0


def require_ray():
    """Import ray, or say how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise VsearchError(
            f"--engine ray needs Ray Data ({e}); install it with: pip install 'vsearch[ray]'"
        ) from None
    return ray


def embed_misses(
    misses: Mapping[str, tuple[str, str | None, bytes | None]],
    *,
    model: str,
    pretrained: str | None,
    precision: str,
    fingerprint: str,
    dim: int,
    options: RayOptions,
    on_vectors: Callable[[list[str], np.ndarray], None],
) -> tuple[dict[str, str], RayRun]:
    """Embed ``misses`` (content hash -> (name for messages, file path or None, bytes of a
    downloaded URL or None)) on Ray.

    ``on_vectors(keys, vectors)`` gets each batch as it arrives (a key may come twice when Ray
    retries a batch). Returns ({content hash: why that image could not be used}, what ran).
    """
    ray = require_ray()
    started_here = False
    if not ray.is_initialized():
        import logging

        try:
            ray.init(
                address=options.address,
                include_dashboard=False,
                logging_level=logging.WARNING,
                log_to_driver=False,
            )
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = (
                options.address
                or os.environ.get("RAY_ADDRESS")
                or "the last cluster `ray start` ran here, or a new one"
            )
            raise VsearchError(
                f"could not start or join Ray at {where}: {e}. Check --ray-address / RAY_ADDRESS "
                "(and RAY_AUTH_TOKEN); `ray stop` forgets a cluster that is gone"
            ) from e
        started_here = True
    try:
        return _run(
            ray,
            misses,
            model=model,
            pretrained=pretrained,
            precision=precision,
            fingerprint=fingerprint,
            dim=dim,
            options=options,
            on_vectors=on_vectors,
        )
    finally:
        if started_here:
            ray.shutdown()


SHARD_ROWS = 50_000  # vectors per Parquet shard


def embed_into_cache(
    misses: Mapping[str, tuple[str, str | None, bytes | None]],
    embedder: Any,
    cache: Any,
    *,
    job: Mapping[str, Any],
    shards_dir: os.PathLike | str,
    shards_only: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[set[str], dict[str, str], RayRun]:
    """The build's side of a Ray job: each batch that comes back goes into Parquet shards in
    ``shards_dir`` and, unless ``shards_only`` (a catalog too big for the single-machine cache,
    see ``build.ON_DISK_MIN_VECTORS``), into the SQLite embedding cache too (committed per
    batch, as locally); a key Ray delivers twice is kept once. The driver holds at most one
    shard's vectors (SHARD_ROWS), never all of them: the build reads them back from the cache or
    the shards. Returns (content hashes embedded, errors by hash, what ran)."""
    from vsearch.embeddings.shards import write_embedding_shard

    if not misses:  # everything was cached: no need to start or join a cluster
        return set(), {}, RayRun(actors=0, cpus_per_actor=0)
    fingerprint = embedder.fingerprint
    new: set[str] = set()
    unsaved: dict[str, np.ndarray] = {}

    # shards of SHARD_ROWS vectors; the rest too at the end
    def save_shards(full_only: bool) -> None:
        while len(unsaved) >= (SHARD_ROWS if full_only else 1):
            keys = list(islice(unsaved, SHARD_ROWS))
            write_embedding_shard(
                shards_dir, keys, np.stack([unsaved.pop(k) for k in keys]), fingerprint
            )

    def on_vectors(keys: list[str], vectors: np.ndarray) -> None:
        fresh = [(k, v) for k, v in zip(keys, vectors) if k not in new]
        if not fresh:
            return
        if not shards_only:
            cache.put_many([k for k, _ in fresh], np.stack([v for _, v in fresh]), fingerprint)
        for k, v in fresh:
            new.add(k)
            unsaved[k] = v
        save_shards(full_only=True)
        if progress is not None:
            progress(len(new), len(misses))

    errors, run = embed_misses(
        misses,
        model=job["model"],
        pretrained=job["pretrained"],
        precision=job["precision"],
        fingerprint=fingerprint,
        dim=int(embedder.dim),
        options=job["options"],
        on_vectors=on_vectors,
    )
    save_shards(full_only=False)
    return new, {k: e for k, e in errors.items() if k not in new}, run


def _run(ray, misses, *, model, pretrained, precision, fingerprint, dim, options, on_vectors):
    import pyarrow as pa

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    total = int(ray.cluster_resources().get("CPU", 1)) or 1
    if options.actors:
        actors = max(1, options.actors)
        cpus = options.cpus_per_actor or max(1, total // actors)
    else:
        cpus = options.cpus_per_actor or min(4, total)
        actors = max(1, total // cpus)
    run = RayRun(actors=actors, cpus_per_actor=cpus, address=ray.get_runtime_context().gcs_address)
    errors: dict[str, str] = {}
    if not misses:
        return errors, run
    keys = list(misses)
    table = pa.table(
        {
            "key": pa.array(keys, type=pa.string()),
            "name": pa.array([misses[k][0] for k in keys], type=pa.string()),
            "path": pa.array([misses[k][1] for k in keys], type=pa.string()),
            "data": pa.array([misses[k][2] for k in keys], type=pa.binary()),
        }
    )
    blocks = [
        table.slice(i, ROWS_PER_READ_BLOCK) for i in range(0, len(table), ROWS_PER_READ_BLOCK)
    ]
    ds = ray.data.from_arrow(blocks)
    ds = ds.map_batches(_read_files, batch_format="pyarrow", batch_size=None, num_cpus=0)
    # A killed actor is restarted and its batch run again, a bounded number of times (Ray Data's
    # default, -1, is forever); tests/test_ray_engine.py kills one once, and one on every batch.
    # Ray 2.60 takes these only as ray_remote_args, which it warns are deprecated (removed in 2.64,
    # named parameters to come): the pinned version has no other way, so that warning is silenced.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        ds = ds.map_batches(
            _EmbedActor,
            batch_format="pyarrow",
            batch_size=options.batch_size,
            num_cpus=cpus,
            compute=_pool(ray, actors, cpus, total),
            max_restarts=ACTOR_MAX_RESTARTS,
            max_task_retries=BATCH_MAX_RETRIES,
            fn_constructor_kwargs={
                "model": model,
                "pretrained": pretrained,
                "precision": precision,
                "fingerprint": fingerprint,
                "threads": cpus,
            },
        )
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            fatal = [f for f in batch.column("fatal").to_pylist() if f]
            if fatal:
                raise ModelError(fatal[0])
            run.batches += 1
            run.worker_pids.update(batch.column("pid").to_pylist())
            run.hosts.update(batch.column("host").to_pylist())
            good = [], []
            for key, err, vec in zip(
                batch.column("key").to_pylist(),
                batch.column("error").to_pylist(),
                batch.column("vector").to_pylist(),
            ):
                if err:
                    errors.setdefault(key, err)
                else:
                    good[0].append(key)
                    good[1].append(vec)
            if good[0]:
                vectors = np.asarray(good[1], dtype=np.float32).reshape(len(good[0]), dim)
                on_vectors(good[0], vectors)
    except (VsearchError, KeyboardInterrupt):
        raise
    except Exception as e:  # a Ray error: name the cause the worker raised, not Ray's wrapper
        cause = getattr(e, "cause", None) or e
        hint = ""
        if any(
            word in f"{type(cause).__name__} {str(cause)[:200]}"
            for word in ("ActorDied", "ActorUnavailable")
        ):
            hint = (
                f" (a model actor died and was restarted up to {ACTOR_MAX_RESTARTS} times; look "
                "for a "
                "worker running out of memory, or an image that crashes the decoder)"
            )
        raise VsearchError(
            f"the Ray embedding job failed{hint}: {type(cause).__name__}: {cause}"
        ) from e
    return errors, run


def _pool(ray, actors: int, cpus: int, total: int):
    """A fixed pool when the cluster has room for it now; else start what fits and grow (an
    autoscaling cluster adds nodes) rather than wait for actors that cannot be placed."""
    fits = max(1, total // cpus)
    if actors <= fits:
        return ray.data.ActorPoolStrategy(size=actors)
    return ray.data.ActorPoolStrategy(min_size=fits, max_size=actors)


def _read_files(batch):
    """Ray Data task: read each miss's bytes (URL rows came with theirs); a failure is that row's
    error."""
    import pyarrow as pa

    from vsearch.catalog.images import read_image_bytes
    from vsearch.errors import ImageError

    datas, errs = [], []
    for path, data in zip(batch.column("path").to_pylist(), batch.column("data").to_pylist()):
        err = ""
        if data is None:
            try:
                data = read_image_bytes(path)
            except ImageError as e:
                err = str(e)
            except Exception as e:
                err = f"{path}: unexpected error {type(e).__name__}: {e}"
        datas.append(data)
        errs.append(err)
    return pa.table(
        {
            "key": batch.column("key"),
            "name": batch.column("name"),
            "data": pa.array(datas, type=pa.binary()),
            "error": pa.array(errs, type=pa.string()),
        }
    )


class _EmbedActor:
    """Ray Data actor: the model, loaded once; decode + preprocess in threads, one batched forward
    pass."""

    def __init__(
        self, model: str, pretrained: str | None, precision: str, fingerprint: str, threads: int
    ):
        import socket
        from concurrent.futures import ThreadPoolExecutor

        import torch

        torch.set_num_threads(max(1, threads))
        self.pid = os.getpid()
        self.host = socket.gethostname()
        self.fatal = ""
        self.embedder = None
        where = f"Ray worker {self.host} (pid {self.pid})"
        try:
            from vsearch.embedders import load_embedder

            self.embedder = load_embedder(model, pretrained, precision=precision)
            if self.embedder.fingerprint != fingerprint:
                self.fatal = (
                    f"{where} loaded {model} with other weights than the driver (fingerprint "
                    f"{self.embedder.fingerprint[:16]}, driver {fingerprint[:16]}); --pretrained "
                    "must be "
                    "the same file on every node"
                )
        except Exception as e:
            self.fatal = f"{where} could not load model {model}: {type(e).__name__}: {e}"
        self.pool = ThreadPoolExecutor(
            max_workers=max(1, threads), thread_name_prefix="vsearch-ray-decode"
        )

    def __call__(self, batch):
        import hashlib
        import io

        _maybe_die_for_test()
        keys = batch.column("key").to_pylist()
        n = len(keys)
        if self.fatal:
            return _out(keys, [""] * n, None, 0, self.pid, self.host, self.fatal)
        errors = batch.column("error").to_pylist()

        def prepare(i: int):
            if errors[i]:
                return None
            data = batch.column("data")[i].as_py()
            name = batch.column("name")[i].as_py()
            if hashlib.sha256(data).hexdigest() != keys[i]:
                errors[i] = (
                    f"{name}: the file changed while the build ran; rebuild to index its new "
                    "content"
                )
                return None
            from vsearch.catalog.images import load_image
            from vsearch.errors import ImageError

            try:
                image = load_image(
                    io.BytesIO(data), min_side=getattr(self.embedder, "input_size", None), name=name
                )
                return self.embedder.preprocess(image)
            except ImageError as e:
                errors[i] = str(e)
            except Exception as e:
                errors[i] = f"{name}: unexpected error {type(e).__name__}: {e}"
            return None

        tensors = list(self.pool.map(prepare, range(n)))
        good = [i for i, t in enumerate(tensors) if t is not None]
        dim = int(self.embedder.dim)
        vectors = np.zeros((n, dim), dtype=np.float32)
        if good:
            import torch

            vectors[good] = self.embedder.embed_batch(torch.stack([tensors[i] for i in good]))
        return _out(keys, errors, vectors, dim, self.pid, self.host, "")


def _out(keys, errors, vectors, dim, pid, host, fatal):
    import pyarrow as pa

    n = len(keys)
    if vectors is None:
        vectors = np.zeros((n, max(dim, 1)), dtype=np.float32)
    width = vectors.shape[1]
    vec = pa.FixedSizeListArray.from_arrays(
        pa.array(np.ascontiguousarray(vectors).reshape(-1)), width
    )
    return pa.table(
        {
            "key": pa.array(keys, type=pa.string()),
            "error": pa.array(errors, type=pa.string()),
            "vector": vec,
            "pid": pa.array([pid] * n, type=pa.int64()),
            "host": pa.array([host] * n, type=pa.string()),
            "fatal": pa.array([fatal] * n, type=pa.string()),
        }
    )


def _maybe_die_for_test() -> None:
    """Tests only: when the file $VSEARCH_TEST_RAY_EXIT_ONCE exists, the one worker that manages to
    delete it dies at once (mid-run, leaving its pid in FILE.killed), to prove that a killed actor
    loses nothing. While FILE.always exists, every worker dies on every batch (a pid a line in it),
    to prove that the retries end."""
    marker = os.environ.get(TEST_EXIT_ONCE_ENV)
    if marker and os.path.exists(marker + ".always"):
        with open(marker + ".always", "a") as f:
            f.write(f"{os.getpid()}\n")
        os._exit(1)
    if marker:
        try:
            os.unlink(marker)
        except OSError:
            return
        with open(marker + ".killed", "w") as f:
            f.write(str(os.getpid()))
        os._exit(1)
