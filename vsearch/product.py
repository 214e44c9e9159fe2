"""The one product record that flows from the catalog through the index to search hits."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Product:
    """One product, the one record that flows from the catalog through the index to search hits:
    :class:`Catalog` merges a product's rows into it, the store writes and reads it, and every
    ``Hit`` carries it."""

    product_id: str
    title: str = ""
    category: str = ""
    price: float | None = None
    url: str = ""
    brand: str = ""
    # further catalog columns (name, value), in column order
    extra: tuple[tuple[str, str], ...] = ()

    @property
    def metadata(self) -> dict[str, str]:
        """The further catalog columns as a dict (what ``Hit.metadata`` and filters see)."""
        return dict(self.extra)


class ReadsProduct:
    """Read-only shortcuts to a ``product`` attribute's fields (x.product_id, x.title, ...,
    x.extra, x.metadata), shared by the records that carry a :class:`Product`."""

    product: Product

    product_id = property(lambda self: self.product.product_id)
    title = property(lambda self: self.product.title)
    category = property(lambda self: self.product.category)
    price = property(lambda self: self.product.price)
    url = property(lambda self: self.product.url)
    brand = property(lambda self: self.product.brand)
    extra = property(lambda self: self.product.extra)
    metadata = property(lambda self: self.product.metadata, doc="extra catalog columns as a dict")
