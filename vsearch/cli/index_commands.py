"""The commands that make and keep an index: build, check (the catalog or index's photos), gc
and tune.

Apart from the commands that use an index (`query_commands`) because they share nothing with them
but the index folder: each reports progress and what it changed on disk.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vsearch.cli.options import quality_build_options
from vsearch.errors import VsearchError


def cmd_build(args: argparse.Namespace) -> int:
    from vsearch.build import build_index

    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if args.quiet:
            return
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="img", desc="embedding", dynamic_ncols=True)
        bar.update(done - bar.n)

    if args.engine == "ray":
        _quiet_ray()
    fetch_policy = None
    if args.allow_private_urls:
        from vsearch.catalog.fetch import FetchPolicy

        fetch_policy = FetchPolicy(allow_private=True)
    try:
        report = build_index(
            args.catalog,
            args.index,
            model=args.model,
            pretrained=args.pretrained,
            precision=args.precision,
            index_type=args.index_type,
            batch_size=args.batch_size,
            workers=args.workers,
            strict=args.strict,
            allow_outside_paths=args.allow_outside_paths,
            fetch_policy=fetch_policy,
            progress=progress,
            embeddings=args.embeddings,
            engine=args.engine,
            ray_address=args.ray_address,
            ray_actors=args.ray_actors,
            tuned=args.tuned,
            **quality_build_options(args),
        )
    finally:
        if bar is not None:
            bar.close()
    for p in report.skipped:
        where = f"row {p.row}" if p.row else "catalog"
        print(f"skipped {where}: {p.reason}", file=sys.stderr)
    for p in report.warnings:
        where = f"row {p.row}" if p.row else "catalog"
        print(f"warning {where}: {p.reason}", file=sys.stderr)
    if report.engine.get("actors"):
        e = report.engine
        print(
            f"embedded on Ray at {e['address']}: {e['actors']} actor(s) x {e['cpus_per_actor']} "
            f"CPU(s) on {', '.join(e['hosts'])}; "
            f"vectors also in {e['shards']}"
        )
    print(
        f"built {report.index_dir} ({report.generation}) with {report.model}: {report.products} "
        "products, "
        f"{report.images} images ({report.embedded} embedded, {report.reused} reused from cache), "
        f"{len(report.skipped)} rows skipped, {report.removed_products} products removed, "
        f"index {report.index_type}, {report.seconds:.1f} s ({report.images_per_second:.1f} "
        "images/s)"
    )
    if getattr(report.embedder, "tuned", None):
        print(
            f"embedded with the model tuned to this index ({report.embedder.tuned['weights']}); "
            "--tuned off for the base model"
        )
    inc = report.incremental
    if inc.get("base"):
        print(
            f"index updated from {inc['base']}: {inc['added']} vectors added, {inc['removed']} "
            "removed"
            + (f" ({inc['hidden']} hidden vectors in the HNSW graph)" if inc.get("hidden") else "")
        )
    elif inc.get("quantizer_from"):
        print(
            f"IVF lists rebuilt on the trained quantizer of {inc['quantizer_from']} "
            f"({inc['added']} images added, {inc['removed']} removed since the last build)"
        )
    return 0


def _quiet_ray() -> None:
    """Ray Data logs each dataset's start and end at INFO; the build prints its own summary."""
    try:
        import logging

        import ray.data  # noqa: F401  (it sets up its loggers on import; change them after)
    except ImportError:
        return  # build_index says how to install Ray
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def cmd_check(args: argparse.Namespace) -> int:
    from vsearch.catalog.hygiene import check

    if not Path(args.target).exists():
        raise VsearchError(
            f"{args.target!r} does not exist; give a catalog CSV, an image folder or an index "
            "folder"
        )
    report = check(
        args.target, allow_outside_paths=args.allow_outside_paths, min_side=args.min_side
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
        return 0
    limit = max(0, args.limit)
    print(
        f"checked {report.source} ({report.kind}: {report.n_images} photos of {report.n_products} "
        "products) "
        f"in {report.seconds:.1f} s"
    )
    print(f"near-identical photos under different product ids: {len(report.duplicates)} group(s)")
    for g in report.duplicates[:limit]:
        print(f"  {len(g.photos)} photos, products {', '.join(g.product_ids)}:")
        for p in g.photos:
            print(f"    {p.describe()}")
    if report.kind == "index":
        print(f"views that disagree with their product's other views: {len(report.odd_views)}")
        for v in report.odd_views[:limit]:
            print(
                f"  {v.photo.describe()}: best similarity to its other {v.n_views - 1} view(s) "
                f"{v.agreement:.2f} "
                f"(typical {v.typical:.2f}, unrelated photos {v.unrelated:.2f}); closest: "
                f"{v.closest.image}"
            )
    print(f"unreadable or tiny photos: {len(report.bad_photos)}")
    for b in report.bad_photos[:limit]:
        where = f"row {b.photo.row}" if b.photo.row else "catalog"
        print(
            f"  {where} {b.photo.product_id + ' ' if b.photo.product_id else ''}{b.photo.image}: "
            f"{b.problem}"
        )
    shown = max(len(report.duplicates), len(report.odd_views), len(report.bad_photos))
    if shown > limit:
        print(f"(at most {limit} of each kind shown; --limit N or --json for all)")
    for line in report.not_checked:
        print(f"not checked: {line}")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    from vsearch.store.gc import collect_garbage

    r = collect_garbage(args.index, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    print(
        f"{args.index}: kept what {', '.join(r.generations) or 'no generation'} use(s); {verb} "
        f"{r.cache_rows} cached "
        f"embedding(s), {r.shard_rows} Parquet shard row(s), {r.file_rows} file record(s), "
        f"{r.downloads} downloaded image(s) ({r.bytes_freed / 2**20:.1f} MiB), {r.tuned_files} "
        "tuned model file(s)"
    )
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from vsearch.learn.tune import tune_index

    bars: dict = {}
    names = {
        "check": ("checking photos", "photo"),
        "cache": ("caching views", "view"),
        "train": ("training", "step"),
    }

    def progress(phase: str, done: int, total: int) -> None:
        if args.quiet:
            return
        if phase not in bars:
            from tqdm import tqdm

            for bar in bars.values():
                bar.close()
            bars[phase] = tqdm(
                total=total,
                initial=done,
                desc=names[phase][0],
                unit=names[phase][1],
                dynamic_ncols=True,
            )
        bars[phase].update(done - bars[phase].n)

    def on_plan(p) -> None:
        print(
            f"tuning {p.model} ({p.stages} last stages) on {p.products} products: {p.photos} "
            "catalog photos, "
            f"{p.pair_photos} shopper photos, {p.validation_photos} held out; {p.views} augmented "
            "copies each; cached "
            f"activations {p.cache_bytes / 2**30:.2f} GiB on disk ({p.free_bytes / 2**30:.1f} GiB "
            "free)" + ("; resuming the interrupted tune" if p.resumed else ""),
            file=sys.stderr,
        )

    try:
        r = tune_index(
            args.index,
            stages=args.stages,
            views=args.views,
            train_pairs=args.train_pairs,
            max_minutes=args.max_minutes,
            max_steps=args.max_steps,
            validate_every=args.validate_every,
            restart=args.restart,
            progress=progress,
            on_plan=on_plan,
        )
    finally:
        for bar in bars.values():
            bar.close()
    print(
        f"{args.index}: {r.reason}"
        + (
            f" ({r.steps} steps, stopped: {r.stopped}, {r.seconds / 60:.1f} min)"
            if r.finished
            else ""
        )
    )
    if r.kept:
        print(
            "the next vsearch build embeds every image again with the tuned model (about "
            f"{r.reembed_seconds / 60:.1f} min "
            "of model time here); search keeps the current index until then"
        )
    return 0
