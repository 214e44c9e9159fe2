"""The shop's catalog: reading rows into products, fetching URLs, decoding photos, and the catalog
check."""
