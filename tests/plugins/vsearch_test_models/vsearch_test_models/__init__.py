"""vsearch plugin with the test suite's models: ``test-tiny``.

Registered through the ``vsearch.models`` entry point (see this package's pyproject.toml), the
same way any model plugin adds a model.
"""

from __future__ import annotations

from vsearch.errors import ModelError

TINY_NAME = "test-tiny"


def register_models(register) -> None:
    register(TINY_NAME, load_test_tiny, help="tests only: a tiny randomly initialised CLIP")


def load_test_tiny(spec: str, pretrained: str | None = None, *, precision: str = "auto"):
    if spec != TINY_NAME:
        raise ModelError(f"model {spec!r}: {TINY_NAME} takes no options")
    if pretrained:
        raise ModelError(
            f"model {TINY_NAME} is randomly initialised; pretrained={pretrained!r} is not accepted"
        )
    from .tiny import load_tiny

    return load_tiny(precision=precision)
