"""One build at a time per index folder, on POSIX (fcntl) and where fcntl does not exist
(Windows)."""

from __future__ import annotations

import os
import sys
import types

import pytest
from conftest import FakeEmbedder

from vsearch.build import build_index
from vsearch.errors import VsearchError
from vsearch.search import ProductIndex
from vsearch.store.lock import exclusive_build


def fake_msvcrt() -> types.ModuleType:
    """msvcrt.locking as Windows does it: a byte range locked through one handle refuses every other
    handle (even in the same process) until unlocked; unlocking what is not locked is an error."""
    held: dict[tuple[int, int, int], int] = {}
    mod = types.ModuleType("msvcrt")
    mod.LK_NBLCK, mod.LK_UNLCK = 2, 0
    mod.calls = []

    def locking(fd: int, mode: int, nbytes: int) -> None:
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino, os.lseek(fd, 0, os.SEEK_CUR))
        mod.calls.append((mode, key[2], nbytes))
        if mode == mod.LK_NBLCK:
            if key in held:
                raise PermissionError(13, "Permission denied")
            held[key] = fd
        elif mode == mod.LK_UNLCK:
            if held.get(key) != fd:
                raise PermissionError(13, "Permission denied")
            del held[key]

    mod.locking = locking
    return mod


@pytest.fixture
def windows(monkeypatch):
    """A Python without fcntl, with (a stand-in for) msvcrt."""
    monkeypatch.setitem(sys.modules, "fcntl", None)  # `import fcntl` now raises ImportError
    msvcrt = fake_msvcrt()
    monkeypatch.setitem(sys.modules, "msvcrt", msvcrt)
    return msvcrt


def test_a_second_build_on_the_same_folder_is_refused_while_one_runs(catalog_csv, tmp_path):
    index_dir = tmp_path / "idx"
    with exclusive_build(index_dir):
        with pytest.raises(VsearchError, match="another build is already running"):
            build_index(catalog_csv, index_dir, embedder=FakeEmbedder())
    report = build_index(catalog_csv, index_dir, embedder=FakeEmbedder())  # lock released
    assert report.products == 12


def test_build_works_without_fcntl(windows, catalog_csv, tmp_path):
    with pytest.raises(ImportError):
        import fcntl  # noqa: F401
    index_dir = tmp_path / "idx"
    first = build_index(catalog_csv, index_dir, embedder=FakeEmbedder())
    again = build_index(catalog_csv, index_dir, embedder=FakeEmbedder())  # the lock was released
    assert (first.products, again.reused) == (12, 18)
    assert (
        ProductIndex.load(index_dir, FakeEmbedder())
        .search(image=catalog_csv.parent / "images" / "p003-0.jpg", k=1)[0]
        .product_id
        == "P003"
    )
    # each build locked the first byte and unlocked it again
    assert [(mode, pos, n) for mode, pos, n in windows.calls] == [(2, 0, 1), (0, 0, 1)] * 2


def test_without_fcntl_a_second_build_is_still_refused(windows, catalog_csv, tmp_path):
    index_dir = tmp_path / "idx"
    with exclusive_build(index_dir):
        with pytest.raises(VsearchError, match="another build is already running"):
            build_index(catalog_csv, index_dir, embedder=FakeEmbedder())
    assert build_index(catalog_csv, index_dir, embedder=FakeEmbedder()).products == 12


def test_build_works_with_neither_fcntl_nor_msvcrt(monkeypatch, catalog_csv, tmp_path):
    monkeypatch.setitem(sys.modules, "fcntl", None)
    monkeypatch.setitem(sys.modules, "msvcrt", None)
    assert build_index(catalog_csv, tmp_path / "idx", embedder=FakeEmbedder()).products == 12


def test_vsearch_build_command_runs_where_fcntl_cannot_be_imported(catalog_csv, tmp_path):
    """A fresh interpreter without fcntl: nothing on the build path may import it at module
    level."""
    import subprocess

    code = (
        "import sys; sys.modules['fcntl'] = None; sys.modules['msvcrt'] = None\n"
        "from vsearch.cli import main\n"
        f"sys.exit(main(['build', {str(catalog_csv)!r}, '--index', {str(tmp_path / 'idx')!r}, "
        "'--model', 'test-tiny', '--quiet']))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "12 products" in out.stdout
