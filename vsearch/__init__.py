"""vsearch: visual product search over a store's catalog.

    from vsearch import ProductIndex, build_index
    build_index("catalog.csv", "index/default", model="efficientnet-lite0")
    hits = ProductIndex.load("index/default").search(image="photo.jpg", k=10)

Heavy modules (torch, faiss, open_clip) load on first use, not on import.
"""

__version__ = "0.1.0"

__all__ = [
    "ProductIndex",
    "Hit",
    "Product",
    "build_index",
    "BuildReport",
    "read_catalog",
    "load_embedder",
    "load_image",
    "errors",
]


def __getattr__(name: str):
    # Lazy re-exports keep `import vsearch` and `vsearch --help` instant.
    if name in ("ProductIndex", "Hit"):
        from vsearch import search

        return getattr(search, name)
    if name in ("build_index", "BuildReport"):
        from vsearch import build

        return getattr(build, name)
    if name in ("read_catalog", "Product"):
        from vsearch.catalog import rows as catalog

        return getattr(catalog, name)
    if name == "load_embedder":
        from vsearch.embedders import load_embedder

        return load_embedder
    if name == "load_image":
        from vsearch.catalog.images import load_image

        return load_image
    if name == "errors":
        from vsearch import errors

        return errors
    raise AttributeError(f"module 'vsearch' has no attribute {name!r}")
