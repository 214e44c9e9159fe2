"""The README's Python quickstart runs as written (on the generated sample catalog, offline
model)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_quickstart_runs_as_written(tmp_path, monkeypatch, capsys):
    from vsearch.demo import write_sample_catalog, write_sample_queries

    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    quickstart = next(b for b in blocks if "build_index(" in b and "ProductIndex.load" in b)
    catalog = write_sample_catalog(tmp_path / "shop")
    photo, product_id = write_sample_queries(tmp_path / "queries", catalog, n_queries=1)[0]
    shutil.copy(photo, tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(quickstart, "README.md", "exec"), namespace)
    hits = namespace["hits"]
    assert hits and all(h.category == "Mugs" and h.price <= 50 for h in hits)
    assert (tmp_path / "index" / "shop" / "CURRENT").is_file()
    printed = capsys.readouterr().out
    assert namespace["best"].product_id in printed
