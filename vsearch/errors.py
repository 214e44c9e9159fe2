"""Typed errors. The library raises these; only the CLI and the UI turn them into messages."""


class VsearchError(Exception):
    """Base class for every error vsearch reports to a person."""


class CatalogError(VsearchError):
    """The catalog as a whole cannot be used (missing file, missing columns, empty)."""


class ImageError(VsearchError):
    """One image cannot be used; the message names the image and the reason."""


class ModelError(VsearchError):
    """A model name, checkpoint or weights cannot be used."""


class ModelUnavailableError(ModelError):
    """Weights are not cached locally and cannot be downloaded."""


class IndexFormatError(VsearchError):
    """An index folder is missing, incomplete, or written by a format we do not know."""


class ModelMismatchError(VsearchError):
    """A query model differs from the model an index was built with."""


class EmbeddingsImportError(VsearchError):
    """Precomputed embeddings do not match the catalog or the model."""


class FetchError(ImageError):
    """An image URL could not be fetched safely."""


class FeedbackError(VsearchError):
    """A shopper's confirmed match cannot be recorded (bad input, or the feedback folder is
    full)."""


class ServerBusyError(VsearchError):
    """Every search slot is taken and too many requests are already waiting; try again shortly."""


class NoWordMatchError(VsearchError):
    """No product's text holds any of the query's words (a words-alone search with no text
    model)."""
