"""Retrieval quality: ranking metrics, labelled evaluation and self-test, the HTML report."""
