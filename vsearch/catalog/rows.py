"""Catalog stage: turn a catalog CSV (or a plain folder of images) into validated rows.

Validation happens here, before any model loads, so a person learns about every bad
row (by the row number their spreadsheet shows) in seconds. A bad row never stops the
read: it becomes a :class:`RowProblem` and the rest of the file continues. Only a file
that cannot be used at all (missing, empty, no data rows, missing or duplicate columns)
raises :class:`~vsearch.errors.CatalogError`.

Rules worth knowing:

* Row numbers count like a spreadsheet: the header is row 1, the first data record row 2.
  A record whose quoted field spans several lines gets the line it starts on.
* Blank records (every cell empty) are skipped silently; they are not products.
* A product may have several images: repeat its ``product_id`` on several rows and/or
  put several images in one ``image`` cell separated by ``|``.
* Metadata for a product is merged across its rows: for each field the **first
  non-empty value wins**. A later non-empty value that differs is kept out and reported
  as a non-fatal warning; later empty values never conflict.
* The same (product_id, image) pair twice is a non-fatal warning; the repeat is dropped.
* Images are http(s) URLs (kept as written; another stage downloads them) or local
  paths. Relative paths resolve against the CSV's folder; a path that resolves outside
  that folder (``..``, symlinks, absolute paths) is refused unless
  ``allow_outside_paths=True``. Whether the file exists is the image stage's business.
"""

from __future__ import annotations

import csv
import itertools
import math
import os
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vsearch.errors import CatalogError
from vsearch.product import Product, ReadsProduct

__all__ = [
    "REQUIRED_COLUMNS",
    "KNOWN_COLUMNS",
    "MAX_FIELD_CHARS",
    "Product",
    "CatalogRow",
    "RowProblem",
    "ProductInfo",
    "Catalog",
    "read_catalog",
    "iter_catalog_rows",
    "parse_price",
]

REQUIRED_COLUMNS = ("product_id", "image")
KNOWN_COLUMNS = ("product_id", "image", "title", "category", "price", "url", "brand")
MAX_FIELD_CHARS = 10_000
"""Longer cells are almost always a broken quote swallowing the rest of the file."""

_MAX_LINE_CHARS = 1_000_000  # one physical line; longer ones are skipped unread (bounded memory)
_META_FIELDS = ("title", "category", "price", "url", "brand")
_SURROGATE = re.compile("[\udc80-\udcff]")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_NUMBER = re.compile(r"^([+-]?)(\d+(?:\.\d*)?|\.\d+)$")
_CURRENCY_CODE_START = re.compile(r"^[A-Za-z]{3}\s*")
_CURRENCY_CODE_END = re.compile(r"\s*[A-Za-z]{3}$")
_PATH_CACHE_LIMIT = 4096


ProductInfo = Product  # the merged record's earlier name


# no slots: with them, setting a shortcut below raises TypeError in Python 3.11
@dataclass(frozen=True)
class CatalogRow(ReadsProduct):
    """One (product, image) pair from the catalog; a row with ``a|b`` images gives two. ``product``
    is what this row says; :attr:`Catalog.products` holds the record merged over all its rows."""

    row: int
    image: str
    product: Product  # its fields read through: row.product_id, row.title, ...


@dataclass(frozen=True, slots=True)
class RowProblem:
    """A skipped row or image (``fatal=True``) or a warning about a row still used."""

    row: int
    reason: str
    image: str = ""
    fatal: bool = True


@dataclass
class Catalog:
    """A whole catalog read into memory: good rows, every problem, and product metadata."""

    source: Path
    root: Path
    rows: list[CatalogRow]
    problems: list[RowProblem]
    products: dict[str, Product]

    @property
    def fatal_problems(self) -> list[RowProblem]:
        return [p for p in self.problems if p.fatal]

    @property
    def warnings(self) -> list[RowProblem]:
        return [p for p in self.problems if not p.fatal]


def read_catalog(path: str | os.PathLike, *, allow_outside_paths: bool = False) -> Catalog:
    """Read and validate a catalog CSV or image folder; raise CatalogError only if unusable."""
    reader = _Reader(path, allow_outside_paths=allow_outside_paths)
    rows: list[CatalogRow] = []
    problems: list[RowProblem] = []
    for item in reader:
        if isinstance(item, CatalogRow):
            rows.append(item)
        else:
            problems.append(item)
    return Catalog(
        source=reader.source,
        root=reader.root,
        rows=rows,
        problems=problems,
        products=reader.products(),
    )


def iter_catalog_rows(
    path: str | os.PathLike, *, allow_outside_paths: bool = False
) -> Iterator[CatalogRow | RowProblem]:
    """Stream rows and problems in file order, so huge catalogs never sit in memory whole.

    Memory grows with the number of distinct products (for duplicate and conflict
    checks), not with the file size. CatalogError is raised on the first ``next()`` for
    an unusable file, or at the end for a file with a header but no data rows.
    """
    return iter(_Reader(path, allow_outside_paths=allow_outside_paths))


# --------------------------------------------------------------------------- internals


def _image_extensions() -> frozenset[str]:
    # Imported here: vsearch.catalog.images pulls in Pillow, which a CSV check never needs.
    from vsearch.catalog.images import IMAGE_EXTENSIONS

    return frozenset(e.lower() for e in IMAGE_EXTENSIONS)


def _show(value: str, limit: int = 80) -> str:
    """Quote a value for a message, shortened so a 10k-char cell doesn't flood the report."""
    if len(value) > limit:
        value = value[: limit - 1] + "…"
    return "'" + value + "'"


def _show_price(value: float | None) -> str:
    return "empty" if value is None else f"{value:g}"


def parse_price(text: str) -> float:
    """Parse a price cell such as ``12.50``, ``12,50``, ``$12.50`` or ``12.50 EUR``.

    Raises ValueError with a message naming the value. Comma counts as the decimal
    separator only when there is no dot, because ``1,234.50`` vs ``1.234,50`` cannot be
    told apart safely; such values are refused rather than guessed.
    """
    s = text.strip()
    if s and unicodedata.category(s[0]) == "Sc":
        s = s[1:].lstrip()
    elif _CURRENCY_CODE_START.match(s):
        s = _CURRENCY_CODE_START.sub("", s, count=1)
    if s and unicodedata.category(s[-1]) == "Sc":
        s = s[:-1].rstrip()
    elif _CURRENCY_CODE_END.search(s):
        s = _CURRENCY_CODE_END.sub("", s, count=1)
    if "," in s and "." not in s and s.count(",") == 1:
        s = s.replace(",", ".")
    match = _NUMBER.match(s)
    if not match:
        raise ValueError(
            f"price {_show(text)} is not a number (write e.g. 12.50, 12,50, $12.50 or 12.50 EUR)"
        )
    value = float(match.group(2))
    if not math.isfinite(value):
        raise ValueError(f"price {_show(text)} is not a finite number")
    if match.group(1) == "-" and value != 0:
        raise ValueError(f"price {_show(text)} is negative")
    return value


class _Reader:
    def __init__(self, path: str | os.PathLike, *, allow_outside_paths: bool):
        self.given = Path(os.fspath(path))
        if "\x00" in str(self.given):
            raise CatalogError(f"catalog path {str(self.given)!r} contains a NUL character")
        self.allow_outside = allow_outside_paths
        self.source = Path(os.path.abspath(self.given))
        is_dir = self.source.is_dir()
        self.root = Path(os.path.realpath(self.source if is_dir else self.source.parent))
        self._root_str = str(self.root)
        self._root_prefix = self._root_str.rstrip(os.sep) + os.sep
        self._is_dir = is_dir
        # Plain strings and tuples of atoms: the garbage collector stops tracking those,
        # which keeps 100k-row reads linear and fast.
        self._seen: dict[str, int] = {}  # product_id NUL image -> first row
        # product_id -> (first non-empty value per field, row it came from per field)
        self._products: dict[str, tuple[tuple, tuple]] = {}
        self._extra_names: tuple[str, ...] = ()
        self._unnamed: frozenset[str] = frozenset()
        self._dir_cache: dict[str, str] = {}
        self._lines = 0
        self._overlong: list[int] = []

    # ---- public-ish -------------------------------------------------------------------

    def __iter__(self) -> Iterator[CatalogRow | RowProblem]:
        if self._is_dir:
            return self._iter_folder()
        return self._iter_csv()

    def products(self) -> dict[str, Product]:
        out: dict[str, Product] = {}
        n_meta = len(_META_FIELDS)
        for pid, state in self._products.items():
            values = state[0]
            title, category, price, url, brand = values[:n_meta]
            extra = tuple(
                (name, value)
                for name, value in zip(self._extra_names, values[n_meta:])
                if value or name not in self._unnamed
            )
            out[pid] = Product(pid, title, category, price, url, brand, extra)
        return out

    # ---- folder catalogs ------------------------------------------------------------

    def _iter_folder(self) -> Iterator[CatalogRow | RowProblem]:
        extensions = _image_extensions()
        walk_errors: list[OSError] = []
        n = 0
        for dirpath, dirnames, filenames in os.walk(self.source, onerror=walk_errors.append):
            while walk_errors:
                err = walk_errors.pop(0)
                yield RowProblem(0, f"cannot list folder '{err.filename}': {err.strerror}")
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith(".") or os.path.splitext(name)[1].lower() not in extensions:
                    continue
                n += 1
                full = os.path.join(dirpath, name)
                rel = Path(os.path.relpath(full, self.source)).as_posix()
                product_id = os.path.splitext(rel)[0]
                stem = os.path.splitext(name)[0]
                title = " ".join(stem.replace("_", " ").replace("-", " ").split())
                resolved = os.path.realpath(full)
                if not self.allow_outside and not self._inside(resolved):
                    yield RowProblem(
                        n,
                        f"image path '{rel}' is a link that leaves the catalog folder "
                        "(use --allow-outside-paths to permit)",
                        image=rel,
                    )
                    continue
                if self._surrogate_free(product_id):
                    yield from self._merge(product_id, [title, "", None, "", ""], n, rel)
                    yield CatalogRow(n, resolved, Product(product_id, title=title))
                else:
                    yield RowProblem(
                        n, f"file name {rel!r} is not valid UTF-8; rename it", image=rel
                    )
        while walk_errors:
            err = walk_errors.pop(0)
            yield RowProblem(0, f"cannot list folder '{err.filename}': {err.strerror}")
        if n == 0:
            raise CatalogError(
                f"folder '{self.given}' contains no image files (looked recursively for "
                f"{', '.join(sorted(extensions))}; hidden files are skipped)"
            )

    @staticmethod
    def _surrogate_free(text: str) -> bool:
        return text.isascii() or not _SURROGATE.search(text)

    # ---- CSV catalogs ----------------------------------------------------------------

    def _open(self):
        if not self.source.exists():
            raise CatalogError(
                f"catalog '{self.given}' does not exist; give a CSV file or a folder of images"
            )
        if self.source.suffix.lower() in (".xlsx", ".xls", ".ods", ".numbers"):
            raise CatalogError(
                f"catalog '{self.given}' is a spreadsheet file; save it as 'CSV UTF-8' and use that"
            )
        try:
            return open(self.source, encoding="utf-8-sig", errors="surrogateescape", newline="")
        except OSError as e:
            raise CatalogError(f"cannot open catalog '{self.given}': {e.strerror}") from e

    def _physical_lines(self, f) -> Iterator[str]:
        """Lines with a length cap: an overlong line is skipped unread and noted."""
        while True:
            try:
                line = f.readline(_MAX_LINE_CHARS)
            except OSError as e:
                raise CatalogError(f"cannot read catalog '{self.given}': {e.strerror}") from e
            if not line:
                return
            self._lines += 1
            if len(line) >= _MAX_LINE_CHARS and not line.endswith(("\n", "\r")):
                while True:
                    more = f.readline(_MAX_LINE_CHARS)
                    if not more or more.endswith(("\n", "\r")):
                        break
                self._overlong.append(self._lines)
                yield "\n"
            else:
                yield line

    def _iter_csv(self) -> Iterator[CatalogRow | RowProblem]:
        with self._open() as f:
            lines = self._physical_lines(f)
            first = ""
            for first in lines:
                if first.strip():
                    break
            if not first.strip():
                raise CatalogError(
                    f"catalog '{self.given}' is empty; it needs a header row with "
                    f"{', '.join(REQUIRED_COLUMNS)} and at least one data row"
                )
            header_line = self._lines
            if self._overlong:
                raise CatalogError(
                    f"catalog '{self.given}' does not look like a CSV file: its first line is "
                    f"longer than {_MAX_LINE_CHARS:,} characters"
                )
            delimiter = _sniff_delimiter(first)
            reader = csv.reader(
                itertools.chain([first], lines), delimiter=delimiter, skipinitialspace=True
            )
            try:
                header = next(reader)
            except csv.Error as e:
                raise CatalogError(f"catalog '{self.given}': header row cannot be read: {e}") from e
            columns = self._check_header(header, header_line)
            yield from self._iter_records(reader, columns)

    def _check_header(self, header: list[str], header_line: int) -> dict[str, int]:
        names = [h.strip().lower() for h in header]
        if any("\x00" in n for n in names):
            raise CatalogError(
                f"catalog '{self.given}' does not look like a CSV text file (NUL bytes in its "
                "header)"
            )
        if not all(self._surrogate_free(n) for n in names):
            raise CatalogError(
                f"catalog '{self.given}': header row (row {header_line}) is not valid UTF-8; "
                "save the file as 'CSV UTF-8'"
            )
        counts: dict[str, int] = {}
        for n in names:
            if n:
                counts[n] = counts.get(n, 0) + 1
        duplicates = [n for n, c in counts.items() if c > 1]
        if duplicates:
            raise CatalogError(
                f"catalog '{self.given}' has duplicate column(s) "
                f"{', '.join(repr(d) for d in duplicates)}; every column name must be unique"
            )
        missing = [c for c in REQUIRED_COLUMNS if c not in counts]
        if missing:
            found = ", ".join(_show(n, 40) for n in names[:30] if n) or "none"
            if len(names) > 30:
                found += f", … ({len(names)} in all)"
            hints = []
            for m in missing:
                for n in names:
                    if n and re.sub(r"[\s\-]+", "_", n) == m:
                        hints.append(f"rename {n!r} to {m!r}")
            hint = f" ({'; '.join(hints)})" if hints else ""
            raise CatalogError(
                f"catalog '{self.given}' is missing required column(s) "
                f"{', '.join(repr(m) for m in missing)}{hint}; found columns: {found}. "
                f"Required: {', '.join(REQUIRED_COLUMNS)}; "
                f"optional: {', '.join(KNOWN_COLUMNS[2:])}; any other column is kept as metadata"
            )
        columns = {n: i for i, n in enumerate(names) if n}
        extras = []
        unnamed = set()
        for i, n in enumerate(names):
            if n in KNOWN_COLUMNS:
                continue
            if not n:
                n = f"column_{i + 1}"
                unnamed.add(n)
            extras.append((n, i))
        self._extra_cols = extras
        self._names = [n or f"column_{i + 1}" for i, n in enumerate(names)]
        self._extra_names = tuple(n for n, _ in extras)
        self._unnamed = frozenset(unnamed)
        self._n_columns = len(names)
        return columns

    def _iter_records(self, reader, columns: dict[str, int]) -> Iterator[CatalogRow | RowProblem]:
        end = self._lines
        any_data = False
        while True:
            start = end + 1
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                end = self._lines
                any_data = True
                yield RowProblem(start, f"row cannot be parsed as CSV: {e}")
                self._drop_overlong(end)
                continue
            end = self._lines
            if self._overlong and self._overlong[0] <= end:
                line = self._overlong[0]
                self._drop_overlong(end)
                any_data = True
                yield RowProblem(
                    start,
                    f"line {line} is longer than {_MAX_LINE_CHARS:,} characters; row skipped",
                )
                continue
            if all(not f or f.isspace() for f in fields):
                continue
            any_data = True
            yield from self._record(start, fields, columns)
        if not any_data:
            raise CatalogError(
                f"catalog '{self.given}' has a header but no data rows; add one row per "
                f"product image with at least {', '.join(REQUIRED_COLUMNS)}"
            )

    def _drop_overlong(self, end: int) -> None:
        while self._overlong and self._overlong[0] <= end:
            self._overlong.pop(0)

    def _record(
        self, row: int, fields: list[str], columns: dict[str, int]
    ) -> Iterator[CatalogRow | RowProblem]:
        raw_image = fields[columns["image"]] if columns["image"] < len(fields) else ""
        raw_image = raw_image.strip()
        shown_image = raw_image if self._surrogate_free(raw_image) else ""
        for i, f in enumerate(fields):
            if not f.isascii():
                if _SURROGATE.search(f):
                    where = (
                        f"column {self._names[i]!r}" if i < len(self._names) else f"cell {i + 1}"
                    )
                    yield RowProblem(
                        row,
                        f"row is not valid UTF-8 ({where}); save the file as 'CSV UTF-8'",
                        image=shown_image,
                    )
                    return
            if "\x00" in f:
                yield RowProblem(
                    row, "row contains a NUL character", image=shown_image.replace("\x00", "")
                )
                return
        if len(fields) != self._n_columns:
            yield RowProblem(
                row,
                f"row has {len(fields)} cells but the header has {self._n_columns} columns "
                "(check for an unquoted comma or a missing cell)",
                image=raw_image,
            )
            return
        problems = []
        for name, value in zip(self._names, fields):
            if len(value) > MAX_FIELD_CHARS:
                problems.append(
                    f"column {name!r} is {len(value):,} characters long "
                    f"(limit {MAX_FIELD_CHARS:,}; is a quote left open?)"
                )
        if problems:
            for reason in problems:
                yield RowProblem(row, reason, image=raw_image[:200])
            return

        def get(name: str) -> str:
            i = columns.get(name)
            return fields[i].strip() if i is not None else ""

        product_id = get("product_id")
        if not product_id:
            problems.append("missing product_id value")
        refs = [r.strip() for r in raw_image.split("|")]
        refs = [r for r in refs if r]
        if not refs:
            problems.append("missing image value")
        price: float | None = None
        price_text = get("price")
        if price_text:
            try:
                price = parse_price(price_text)
            except ValueError as e:
                problems.append(str(e))
        if problems:
            for reason in problems:
                yield RowProblem(row, reason, image=raw_image)
            return

        images: list[str] = []
        for ref in refs:
            resolved, reason = self._resolve_image(ref)
            if reason:
                yield RowProblem(row, reason, image=ref)
            else:
                images.append(resolved)
        if not images:
            return

        url = get("url")
        url_scheme = _SCHEME.match(url)
        if (
            url_scheme
            and len(url_scheme.group(1)) > 1
            and url_scheme.group(1).lower()
            not in (
                "http",
                "https",
            )
        ):
            yield RowProblem(
                row,
                f"product url {_show(url)} is not an http(s) link; left out",
                image=raw_image,
                fatal=False,
            )
            url = ""
        title, category, brand = get("title"), get("category"), get("brand")
        extra = tuple(
            (name, fields[i].strip())
            for name, i in self._extra_cols
            if fields[i].strip() or name not in self._unnamed
        )
        extra_values = tuple(fields[i].strip() for _, i in self._extra_cols)
        yield from self._merge(
            product_id, [title, category, price, url, brand, *extra_values], row, raw_image
        )
        product = Product(product_id, title, category, price, url, brand, extra)
        for image in images:
            key = product_id + "\x00" + image
            first = self._seen.get(key)
            if first is not None:
                yield RowProblem(
                    row,
                    f"duplicate of row {first}: product {_show(product_id)} already has this "
                    "image; repeat dropped",
                    image=image,
                    fatal=False,
                )
                continue
            self._seen[key] = row
            yield CatalogRow(row, image, product)

    def _merge(self, product_id: str, values: list, row: int, image) -> Iterator[RowProblem]:
        """Record metadata; first non-empty value per field wins, later differing ones warn."""
        state = self._products.get(product_id)
        if state is None:
            rows = tuple(0 if v == "" or v is None else row for v in values)
            self._products[product_id] = (tuple(values), rows)
            return iter(())
        return self._conflicts(product_id, state, values, row, image)

    def _conflicts(self, product_id, state, values, row, image):
        names = _META_FIELDS + self._extra_names
        kept_values, kept_rows = state
        for i, value in enumerate(values):
            if value == "" or value is None:
                continue
            kept = kept_values[i]
            if kept == "" or kept is None:
                kept_values = kept_values[:i] + (value,) + kept_values[i + 1 :]
                kept_rows = kept_rows[:i] + (row,) + kept_rows[i + 1 :]
                self._products[product_id] = (kept_values, kept_rows)
                continue
            if kept == value:
                continue
            if i == 2:
                shown_new, shown_kept = _show_price(value), _show_price(kept)
            else:
                shown_new, shown_kept = _show(value), _show(kept)
            yield RowProblem(
                row,
                f"product {_show(product_id)}: {names[i]} {shown_new} conflicts with "
                f"{shown_kept} from row {kept_rows[i]}; keeping the first",
                image=image,
                fatal=False,
            )

    # ---- image references ------------------------------------------------------------

    def _resolve_image(self, ref: str) -> tuple[str, str]:
        """Return (image, "") or ("", reason)."""
        scheme = _SCHEME.match(ref)
        if scheme and len(scheme.group(1)) > 1:  # one letter is a Windows drive, not a scheme
            name = scheme.group(1).lower()
            if name in ("http", "https"):
                rest = ref[len(name) + 1 :]
                host = rest[2:].split("/", 1)[0].split("?", 1)[0] if rest.startswith("//") else ""
                if not host:
                    return (
                        "",
                        f"image URL {_show(ref)} has no host (write e.g. "
                        "https://shop.example/a.jpg)",
                    )
                return ref, ""
            return "", (
                f"image {_show(ref)} uses the URL scheme '{scheme.group(1)}:'; only http(s) URLs "
                "and local file paths are accepted (write ./name for a local file whose name has "
                "':')"
            )
        if os.path.isabs(ref):
            resolved = os.path.realpath(ref)
            if self.allow_outside or self._inside(resolved):
                return resolved, ""
            return "", (
                f"image path {_show(ref)} is absolute and outside the catalog folder "
                "(use a path relative to the CSV, or --allow-outside-paths to permit)"
            )
        resolved = self._realpath_relative(ref)
        if self.allow_outside or self._inside(resolved):
            return resolved, ""
        return "", (
            f"image path {_show(ref)} leaves the catalog folder (use --allow-outside-paths to "
            "permit)"
        )

    def _realpath_relative(self, ref: str) -> str:
        """os.path.realpath(root/ref), with resolved parent folders cached (100k rows fast)."""
        if ".." in _split_parts(ref):  # '..' after a symlink is not lexical: resolve fully
            return os.path.realpath(os.path.join(self._root_str, ref))
        plain = (
            os.sep == "/"
            and "//" not in ref
            and "/./" not in ref
            and not ref.startswith("./")
            and not ref.endswith(("/", "/."))
            and ref != "."
        )
        norm = ref if plain else os.path.normpath(ref)  # normpath is safe once '..' is ruled out
        parent, _, name = norm.rpartition(os.sep)
        real_parent = self._dir_cache.get(parent)
        if real_parent is None:
            if len(self._dir_cache) >= _PATH_CACHE_LIMIT:
                self._dir_cache.clear()
            real_parent = os.path.realpath(os.path.join(self._root_str, parent))
            self._dir_cache[parent] = real_parent
        if name in ("", "."):
            return real_parent
        candidate = real_parent.rstrip(os.sep) + os.sep + name
        if os.path.islink(candidate):
            return os.path.realpath(candidate)
        return candidate

    def _inside(self, resolved: str) -> bool:
        return resolved == self._root_str or resolved.startswith(self._root_prefix)


def _split_parts(path: str) -> list[str]:
    if os.altsep:
        path = path.replace(os.altsep, os.sep)
    return path.split(os.sep)


def _sniff_delimiter(header_line: str) -> str:
    """Comma unless the header has none and uses ';' or tab (European Excel exports)."""
    if "," in header_line:
        return ","
    semi, tab = header_line.count(";"), header_line.count("\t")
    if semi == 0 and tab == 0:
        return ","
    return ";" if semi >= tab else "\t"
