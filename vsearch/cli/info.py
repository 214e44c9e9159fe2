"""`vsearch info`: what an index folder holds, in lines a shop engineer reads.

Apart from the other subcommands (`index_commands`, `query_commands`) because it grows with
every stage that records something in the manifest (the verdict, the adaptation, a tuned model),
none of which the other commands need.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def cmd_info(args: argparse.Namespace) -> int:
    from vsearch.store import generations as store

    index_dir = Path(args.index)
    name = store.read_current(index_dir)
    manifest = store.read_manifest(index_dir / name)
    if args.json:
        print(json.dumps({"generation": name, **manifest}, indent=2, sort_keys=True))
        return 0
    model = manifest["model"]
    counts = manifest["counts"]
    print(f"index:        {index_dir} ({name})")
    print(
        f"model:        {model['name']} (fingerprint {model['fingerprint'][:16]}, dim "
        f"{manifest['dim']}, text search: {'yes' if model.get('supports_text') else 'no'})"
    )
    print(f"products:     {counts['products']}")
    print(f"images:       {counts['images']}")
    print(
        f"faiss:        {manifest['index_type']} ({manifest['faiss_factory']}, "
        f"{manifest['metric']})"
    )
    inc = manifest.get("incremental") or {}
    if inc:
        print(
            "last build:   "
            + (
                f"updated {inc['base']}: +{inc['added']} -{inc['removed']} vectors, "
                f"{inc['hidden']} hidden"
                if inc.get("base")
                else f"lists rebuilt on the quantizer trained in {inc['quantizer_from']}"
                if inc.get("quantizer_from")
                else f"full ({inc.get('full_build')})"
            )
        )
    print(
        f"format:       {manifest['format']} v{manifest['format_version']} (vsearch "
        f"{manifest['vsearch_version']})"
    )
    print(f"built:        {manifest['built_at']} from {manifest.get('catalog', '?')}")
    print("close match:  " + _verdict_summary(manifest.get("verdict") or {}))
    print("adaptation:   " + _adaptation_summary(manifest.get("adaptation") or {}))
    print("tuned model:  " + _tuned_summary(index_dir, model))
    post = manifest.get("postprocess") or {}
    if post:
        w = post.get("whitening")
        whitening = f"PCA, fitted on {w['fitted_on']} images" if w else "off"
        dba = f"k={post['dba']['k']}" if post.get("dba") else "off"
        print(f"whitening:    {whitening}; DBA: {dba}")
    if manifest.get("query_defaults"):
        print(
            "query:        " + ", ".join(f"{k}={v}" for k, v in manifest["query_defaults"].items())
        )
    return 0


def _verdict_summary(v: dict) -> str:
    if v.get("threshold") is None:
        return v.get("reason") or "no verdict"
    src = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in (v.get("sources") or {}).items())
    rule = (
        f"top-1 score >= {v['threshold']:.3f}"
        if v.get("signal", "score") == "score"
        else f"top-1 score >= runner-up's + {v['threshold']:.3f}"
    )
    covers = v.get("covers")
    return (
        f"{rule} (precision {v['precision']:.2f}, recall {v['recall']:.2f}, "
        f"unsold photos called close {v['unsold_rate']:.0%}; calibrated on {src})"
        + (
            f"; only for the {len(covers)} products with confirmed photos"
            if covers is not None
            else ""
        )
    )


def _tuned_summary(index_dir: Path, model: dict) -> str:
    from vsearch.embeddings.tuned_model import LATEST_FILE, read_record

    used = (
        f"this generation uses {model['tuned']['weights']}"
        if model.get("tuned")
        else "this generation uses the base model"
    )
    last = read_record(index_dir, LATEST_FILE)
    if last is None:
        return used + " (never tuned: vsearch tune)"
    v = last["validation"]
    return (
        f"{used}; last tune {last['tuned_at']}: {last['stages']} last stages on {last['products']} "
        "products, "
        f"{last['photos']} photos (+{last['pair_photos']} shopper photos), "
        f"{last['validation_photos']} held out; "
        f"validation MRR (what decides keeping it) {v['base']['score']:.3f} -> "
        f"{v['tuned']['score']:.3f}; "
        f"held-out R@1 {v['base']['held_out_r1']:.3f} -> {v['tuned']['held_out_r1']:.3f}, "
        "augmented "
        f"{v['base']['augmented_r1']:.3f} -> {v['tuned']['augmented_r1']:.3f}; " + last["reason"]
    )


def _adaptation_summary(a: dict) -> str:
    state = a.get("state", "off")
    if state in ("fitted", "reused"):
        learned = (
            f"{a['method']} kept {a['dims_kept']} dims, learned from {a['catalog_images']} images "
            "of "
            f"{a['catalog_products']} multi-image products + {a['shopper_pairs']} shopper photo "
            "pairs"
        )
        check = a.get("shopper_check")
        if check:
            learned += (
                f"; simulated shopper photos right with it {check['right_with']} of "
                f"{check['photos']}, without "
                f"{check['right_without']} (kept: sign test p = {check['p_value']})"
            )
        if state == "reused":
            return (
                f"{learned}; reused from {a['reused_from']} ({a['changed_fraction']:.1%} of "
                "its "
                "training images changed)"
            )
        return learned
    if state == "skipped":
        return f"none: {a.get('reason', '')}"
    if state == "rejected":
        dropped = (
            "none: a projection was learned from the catalog's views and dropped, because "
            f"{a.get('reason', '')}"
        )
        if a.get("reused_from"):
            dropped += (
                f"; decision reused from {a['reused_from']} ({a['changed_fraction']:.1%} "
                "of "
                "its training images changed)"
            )
        return dropped
    return "off"
