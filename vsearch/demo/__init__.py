"""The bundled demo: a drawn sample catalog and shopper photos of it (``make demo``, tests,
benchmarks).

Not part of the search library; it lives here so ``app.py`` and the tests can import it.
"""

from vsearch.demo.sample import SAMPLE_COLUMNS, write_sample_catalog, write_sample_queries

__all__ = ["SAMPLE_COLUMNS", "write_sample_catalog", "write_sample_queries"]
