"""Vectors and where they are kept: the embedding cache, Parquet shards, the Ray engine, vectors
made elsewhere, a tuned model's identity and weights."""
