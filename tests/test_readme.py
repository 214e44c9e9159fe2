"""The README and the docs/ pages say true things: the Python quickstart runs as written (on the
generated sample catalog, offline model), every `vsearch` command line they show names a command
and options that `vsearch COMMAND --help` lists, every relative link points to a file (and heading)
that exists, and the public names the README shows import."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"


def _pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


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


def test_readme_first_search_of_your_catalog_comes_early():
    """A newcomer reaches the search of their own catalog within the README's first 60 lines, and
    the README stays short (the details live in docs/)."""
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move details to docs/"
    first = next(
        i for i, line in enumerate(lines, 1) if "vsearch search" in line and "index/shop" in line
    )
    assert first <= 60, f"the first search of one's own catalog is on line {first}"


def test_readme_public_names_import():
    """Every name the README's Python blocks import from vsearch, and every `vsearch.Name` it shows,
    exists."""
    import vsearch

    text = README.read_text(encoding="utf-8")
    names = set()
    for block in re.findall(r"```python\n(.*?)```", text, flags=re.S):
        for found in re.findall(r"^from vsearch import ([\w, ]+)$", block, flags=re.M):
            names |= {n.strip() for n in found.split(",")}
    names |= set(re.findall(r"`vsearch\.([A-Z]\w*)`", text))
    assert {"ProductIndex", "build_index"} <= names
    for name in sorted(names):
        assert getattr(vsearch, name, None) is not None, (
            f"README shows vsearch.{name}, which does not import"
        )


def _resolves(dotted: str) -> bool:
    """A module, or an attribute of one (vsearch.serve.guard.BodyLimits)."""
    import importlib

    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:n]))
        except ImportError:
            continue
        try:
            for attr in parts[n:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


# Strings that look like names: the plugins' entry point group and Parquet shards' metadata keys.
NOT_NAMES = {"vsearch.models", "vsearch.model_fingerprint", "vsearch.dim", "vsearch.format_version"}


def test_every_dotted_name_the_docs_show_exists():
    """`vsearch.x.y` in README.md, docs/ and architecture.md names a module or an attribute that
    exists, and a vsearch/….py path a file that exists, so the docs follow the code when it moves
    (the rename tables' "before" column aside)."""
    missing = []
    for page in [*_pages(), README.parent / "architecture.md"]:
        for line in page.read_text(encoding="utf-8").splitlines():
            if page.name == "python.md" and line.startswith("| "):
                line = line.split("|", 2)[2]  # a rename table: only the "now" column must exist
            for dotted in re.findall(r"`(vsearch(?:\.\w+)+)(?:\(\))?`", line):
                if dotted not in NOT_NAMES and not _resolves(dotted):
                    missing.append(f"{page.name}: {dotted}")
            for path in re.findall(r"\bvsearch/[\w/]+\.py\b", line):
                if page.name != "python.md" and not (README.parent / path).is_file():
                    missing.append(f"{page.name}: {path}")
    assert not missing, "names the docs show that do not exist:\n" + "\n".join(missing)


_SHELL_OPERATORS = {"&&", "||", "|", ";", ">", ">>", "2>", "<"}


def _vsearch_command_lines() -> list[tuple[str, list[str]]]:
    """(where, argv after `vsearch`) for every vsearch command line in a ```bash block of the README
    and docs/."""
    found = []
    for page in _pages():
        text = page.read_text(encoding="utf-8")
        for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                commands, current = [], []
                for word in words:  # one shell line may chain several commands
                    if word in _SHELL_OPERATORS:
                        commands.append(current)
                        current = []
                    else:
                        current.append(word)
                commands.append(current)
                for command in commands:
                    i = 0
                    while i < len(command) and re.fullmatch(
                        r"[A-Za-z_][A-Za-z0-9_]*=.*", command[i]
                    ):
                        i += 1  # environment assignments before the program
                    if command[i : i + 3] in (
                        ["python", "-m", "vsearch"],
                        ["python3", "-m", "vsearch"],
                    ):
                        i += 2
                    if i < len(command) and (
                        command[i] == "vsearch" or command[i].endswith("/vsearch")
                    ):
                        found.append(
                            (f"{page.relative_to(ROOT)}: {line.strip()}", command[i + 1 :])
                        )
    return found


def test_docs_command_lines_match_help():
    """Every `vsearch COMMAND ...` line shown in a bash block of the README or docs/*.md names a
    command that exists and only options its --help lists, and parses as written."""
    from vsearch.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    names = sorted(sub.choices)
    commands = _vsearch_command_lines()
    assert len(commands) >= 20, commands
    shown = set()
    for where, argv in commands:
        assert argv[:1] and argv[0] in names, (
            f"{where}: no such command {argv[:1]} (vsearch --help lists {names})"
        )
        shown.add(argv[0])
        options = {o for a in sub.choices[argv[0]]._actions for o in a.option_strings}
        for word in argv[1:]:
            if word.startswith("-") and not re.fullmatch(r"-\d[\d.]*", word):
                option = word.split("=", 1)[0]
                assert option in options, (
                    f"{where}: 'vsearch {argv[0]} --help' does not list {option}"
                )
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                parser.parse_args(argv)
        except SystemExit as e:
            raise AssertionError(f"{where}: does not parse: {err.getvalue().strip()}") from e
    assert shown == set(sub.choices), (
        f"commands no example shows: {sorted(set(sub.choices) - shown)}"
    )


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def test_readme_links_to_docs_exist():
    """Every relative link in the README and docs/*.md points to a file that exists (and to a
    heading that exists, for a #part), and the README links to every docs/ page."""
    linked_from_readme = set()
    for page in _pages():
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
        for link in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", link):
                continue  # http(s), mailto
            path, _, anchor = link.partition("#")
            target = (page.parent / path).resolve() if path else page
            assert target.exists(), (
                f"{page.relative_to(ROOT)} links to {link}, which does not exist"
            )
            if anchor and target.suffix == ".md":
                assert anchor in _anchors(target), (
                    f"{page.relative_to(ROOT)} links to {link}: no such heading"
                )
            if page == README:
                linked_from_readme.add(target)
    pages = set(DOCS.glob("*.md"))
    assert len(pages) >= 6
    assert pages <= linked_from_readme, (
        f"README.md does not link to {sorted(p.name for p in pages - linked_from_readme)}"
    )
