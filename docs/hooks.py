"""MkDocs hook: files the site shows but that live outside docs/, taken from where they are.

The notebooks (jupytext scripts in notebooks/, executed into pages by mkdocs-jupyter) and the
saved results (benchmarks/results/: figures, transcripts) appear in the site under their own
paths, so a page links them as ``../notebooks/…`` or ``../benchmarks/results/…`` and nothing
is copied into docs/ by hand.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
# the files, as patterns from the repository root; each has the same path in the site
OUTSIDE = (
    "notebooks/*.py",
    "benchmarks/results/*.png",
    "benchmarks/results/*.txt",
    "benchmarks/results/*.md",
    "benchmarks/results/readme/*.txt",
    "benchmarks/results/readme/*/*.png",
)


# chaosgrad.systems and chaosgrad.estimators install from the top-level folders systems/ and
# estimators/; the API reference reads the source without importing it (griffe), so it gets a
# tree laid out as installed: chaosgrad/ with those two folders linked inside.
SOURCE_TREE = ROOT / "build" / "docs-src"


def _link_tree(source: Path, target: Path) -> None:
    """``target`` mirrors ``source``'s folders, each file a link (griffe walks no linked
    folder)."""
    for path in source.rglob("*.py"):
        if "__pycache__" not in path.parts:
            link = target / path.relative_to(source)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path)


@event_priority(100)  # before mkdocstrings reads its search paths, this one among them
def on_config(config):
    package = SOURCE_TREE / "chaosgrad"
    if package.exists():
        shutil.rmtree(package)
    _link_tree(ROOT / "chaosgrad", package)
    for sub in ("systems", "estimators"):
        _link_tree(ROOT / sub, package / sub)
    return config


@event_priority(100)  # before mkdocs-jupyter's on_files, which turns the notebooks into pages
def on_files(files: Files, config) -> Files:
    for pattern in OUTSIDE:
        for path in sorted(ROOT.glob(pattern)):
            files.append(
                File(
                    str(path.relative_to(ROOT)),
                    src_dir=str(ROOT),
                    dest_dir=config["site_dir"],
                    use_directory_urls=config["use_directory_urls"],
                )
            )
    return files


NUMBERS = re.compile(r"^<!-- gallery numbers: (\w+) -->$", re.M)


def _gallery_numbers():
    spec = importlib.util.spec_from_file_location(
        "gallery_numbers", ROOT / "benchmarks" / "gallery_numbers.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def on_page_markdown(markdown: str, page, config, files) -> str:
    """A gallery page's ``<!-- gallery numbers: NAME -->`` becomes the table of every number
    benchmarks/gallery_numbers.py reads from NAME.meta.json (the ones its prose quotes)."""
    if not NUMBERS.search(markdown):
        return markdown
    numbers, _ = _gallery_numbers().numbers()

    def table(match: re.Match) -> str:
        rows = numbers[match.group(1)]  # a name without a meta.json fails the build
        lines = ["| quantity | value |", "|---|---|"]
        for label, value in rows:
            cell = label.replace("|", "\\|")  # a bar would end the cell
            lines.append(f"| {cell} | {value} |")
        return "\n".join(lines)

    return NUMBERS.sub(table, markdown)
