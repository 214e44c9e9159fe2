"""Calibrating the verdict on confirmed shopper photos (--train-pairs): folds by photo session.

A hand-made shop in vector space: each product has one packshot, and its shoppers' photos carry a
product-specific "shelf look" (pointing at an unrelated catalog item, so an unadapted search gets
them wrong) plus a per-session offset. Only a projection that learned the product's shelf look from
*another* session of it answers a new session right - which is what a shop with confirmed pairs
has, what folding by product hides, and what folding by photo overstates.
"""

from __future__ import annotations

import numpy as np
import pytest

from vsearch.learn import verdict as learn
from vsearch.learn.adaptation import fit_adaptation, training_pairs
from vsearch.learn.query_scores import verdict_from_queries


def _shop(*, sessions=2, photos=3, gap=1.0, session=0.8, n=30, distractors=100, d=256, seed=0):
    """(catalog vectors, catalog product ids, shopper photos, their products, their session ids)."""
    rng = np.random.default_rng(seed)

    def unit(*shape):
        x = rng.normal(size=shape + (d,))
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    packshots, others = unit(n), unit(distractors)
    catalog = np.concatenate([packshots, others]).astype(np.float32)
    pids = np.asarray([f"P{i}" for i in range(n)] + [f"X{i}" for i in range(distractors)])
    photos_, labels, session_of = [], [], []
    for p in range(n):
        for s in range(sessions):
            offset = session * unit()
            for _ in range(photos):
                photos_.append(
                    packshots[p] + gap * others[p] + offset + 0.05 * rng.normal(size=d) / np.sqrt(d)
                )
                labels.append(f"P{p}")
                session_of.append(p * sessions + s)
    q = np.asarray(photos_)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return catalog, pids, q.astype(np.float32), np.asarray(labels), np.asarray(session_of)


def _index(catalog, pids, q, labels):
    proj = fit_adaptation(
        catalog, training_pairs(catalog, pids, shopper_vectors=q, shopper_labels=labels)
    )
    return proj, proj.apply(catalog)


def test_session_clusters_join_near_duplicates_of_one_product_only():
    catalog, pids, q, labels, session = _shop()
    cluster = learn.session_clusters(q, labels)
    # one cluster per session: same session <=> same cluster
    assert len(np.unique(cluster)) == len(np.unique(session))
    assert all(len(np.unique(session[cluster == c])) == 1 for c in np.unique(cluster))
    # two identical photos of different products never share a cluster
    twins = learn.session_clusters(np.repeat(q[:1], 2, axis=0), np.asarray(["A", "B"]))
    assert twins[0] != twins[1]


def test_a_session_never_straddles_folds_and_a_products_sessions_are_spread():
    catalog, pids, q, labels, session = _shop()
    fold = learn.session_folds(q, labels, folds=5)
    for s in np.unique(session):  # per-photo folds would split a session's near-duplicates
        assert len(np.unique(fold[session == s])) == 1, (
            f"session {s} split over folds {np.unique(fold[session == s])}"
        )
    for p in np.unique(labels):  # a product's two sessions land in different folds
        assert len(np.unique(fold[labels == p])) == 2


def test_session_folds_give_a_verdict_where_product_folds_cannot_and_it_holds_on_new_sessions():
    catalog, pids, q, labels, session = _shop(sessions=3, seed=1)
    # two sessions confirmed per product; the third is the shop's future
    confirmed = session % 3 < 2
    proj, index_vectors = _index(catalog, pids, q[confirmed], labels[confirmed])
    shopper = (q[confirmed], labels[confirmed])
    by_product = learn.calibrate(
        catalog,
        pids,
        adapted=True,
        index_vectors=index_vectors,
        shopper=shopper,
        pair_folds="product",
    )
    by_session = learn.calibrate(
        catalog, pids, adapted=True, index_vectors=index_vectors, shopper=shopper
    )
    assert by_product.threshold is None, by_product
    assert by_session.threshold is not None, by_session.reason
    assert by_session.recall >= 0.3
    future = verdict_from_queries(
        index_vectors, pids, proj.apply(q[~confirmed]), labels[~confirmed]
    )
    value = future.top if by_session.signal == "score" else future.margin
    close = value >= by_session.threshold
    # the promise holds on unseen sessions
    assert close.sum() >= 10 and future.right[close].mean() >= 0.9


def test_a_verdict_learnt_from_confirmed_photos_covers_only_their_products(tmp_path):
    """Products nobody confirmed a photo of were not learnt from their other sessions: the index
    gives their top-1 answers no verdict, through the manifest and a search alike."""
    import json

    from conftest import FakeEmbedder, write_catalog

    from vsearch.build import build_index
    from vsearch.learn.calibration import VerdictCalibration
    from vsearch.search import ProductIndex

    catalog, pids, q, labels, session = _shop(sessions=3, seed=1)
    confirmed = session % 3 < 2
    _, index_vectors = _index(catalog, pids, q[confirmed], labels[confirmed])
    verdict = learn.calibrate(
        catalog,
        pids,
        adapted=True,
        index_vectors=index_vectors,
        shopper=(q[confirmed], labels[confirmed]),
    )
    # P*, not the X* distractors
    assert verdict.threshold is not None and verdict.covers == frozenset(labels.tolist())
    assert "30 products with confirmed photos (of 130)" in verdict.reason
    high = verdict.threshold + 1.0
    assert verdict.decide(high, 0.0, "P3") is True and verdict.decide(high, 0.0, "X3") is None
    again = VerdictCalibration.from_dict(json.loads(json.dumps(verdict.to_dict())))
    assert again.covers == verdict.covers and again.decide(high, 0.0, "X3") is None
    from vsearch.cli.info import _verdict_summary

    assert "only for the 30 products with confirmed photos" in _verdict_summary(verdict.to_dict())
    # product folds speak for every product (pessimistically): no restriction
    assert (
        learn.calibrate(
            catalog,
            pids,
            adapted=True,
            index_vectors=index_vectors,
            shopper=(q[confirmed], labels[confirmed]),
            pair_folds="product",
        ).covers
        is None
    )

    build_index(write_catalog(tmp_path / "shop"), tmp_path / "idx", embedder=FakeEmbedder())
    index = ProductIndex.load(tmp_path / "idx", FakeEmbedder())
    shot = tmp_path / "shop" / "images" / "p002-0.jpg"
    first = index.search(image=shot, k=2)[0].product_id
    index._gen.verdict = VerdictCalibration(
        0.0,
        1.0,
        0.5,
        0.0,
        10,
        10,
        0.9,
        {"train_pairs": 10},
        "test",
        "score",
        covers=frozenset({first}),
    )
    assert index.search(image=shot, k=2)[0].confident is True
    index._gen.verdict = VerdictCalibration(
        0.0,
        1.0,
        0.5,
        0.0,
        10,
        10,
        0.9,
        {"train_pairs": 10},
        "test",
        "score",
        covers=frozenset({"someone-else"}),
    )
    assert index.search(image=shot, k=2)[0].confident is None


def test_one_session_per_product_is_not_vouched_for_by_its_own_near_duplicates():
    """Folding by photo would let a photo's near-duplicate siblings teach the projection, promising
    a verdict nothing in the pairs supports; folding by session treats it like an unseen product."""
    catalog, pids, q, labels, _ = _shop(sessions=1, photos=4)
    _, index_vectors = _index(catalog, pids, q, labels)
    by_session = learn.calibrate(
        catalog, pids, adapted=True, index_vectors=index_vectors, shopper=(q, labels)
    )
    by_photo = learn.calibrate(
        catalog,
        pids,
        adapted=True,
        index_vectors=index_vectors,
        shopper=(q, labels),
        session_cosine=1.01,
    )  # every photo its own cluster
    assert by_photo.threshold is not None  # what per-photo folding would (wrongly) promise
    assert by_session.threshold is None, by_session


def test_pair_folds_must_be_named():
    catalog, pids, q, labels, _ = _shop(n=20, distractors=20, d=32)
    with pytest.raises(ValueError, match="pair_folds must be 'session' or 'product'"):
        learn.calibrate(
            catalog,
            pids,
            adapted=False,
            index_vectors=catalog,
            shopper=(q, labels),
            pair_folds="photo",
        )
