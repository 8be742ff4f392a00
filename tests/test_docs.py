"""The documentation site's structure, checked without building it (`make docs` builds it
strictly): every public module has an API reference page, every page is in the navigation
and every navigation entry is a file; the README stays a short first page."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# where each installed package's source lives (pyproject.toml's package-dir)
SOURCE = {
    "chaosgrad": ROOT / "chaosgrad",
    "chaosgrad.systems": ROOT / "systems",
    "chaosgrad.estimators": ROOT / "estimators",
}


def _nav() -> list[str]:
    """The files mkdocs.yml's nav names, in order (read as text: the file carries mkdocs'
    own YAML tags, so no YAML loader is needed or wanted here)."""
    text = (ROOT / "mkdocs.yml").read_text()
    nav = text[text.index("\nnav:") :]
    return re.findall(r"^\s+- (?:[^\n]*?: )?(\S+\.(?:md|py))\s*$", nav, re.M)


def public_modules() -> set[str]:
    """Every public module a user can import: chaosgrad's own modules, chaosgrad.systems and
    chaosgrad.estimators with their modules, and the application's (chaosgrad.app, its
    command line aside: cli_types, demo and output are the command's own parts)."""
    found = set()
    for package, folder in SOURCE.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            if any(p.startswith("_") for p in rel.parts[:-1]) or "__pycache__" in rel.parts:
                continue
            if rel.parts[-1] == "__init__":
                rel = rel.parent
            elif rel.parts[-1].startswith("_"):
                continue
            name = ".".join((package, *rel.parts)) if rel.parts else package
            found.add(name)
    found.discard("chaosgrad")  # the package's names are the modules' (reference/index.md)
    return found - {f"chaosgrad.app.{m}" for m in ("cli_types", "demo", "output")}


def _documented() -> dict[str, str]:
    """{module: reference page} for every ``::: module`` in docs/reference/."""
    out = {}
    for page in sorted((DOCS / "reference").glob("*.md")):
        for name in re.findall(r"^::: (\S+)$", page.read_text(), re.M):
            out[name] = f"reference/{page.name}"
    return out


def test_every_public_module_has_a_reference_page_in_the_navigation():
    modules = public_modules()
    assert {"chaosgrad.system", "chaosgrad.systems", "chaosgrad.estimators.pes"} & modules
    assert {"chaosgrad.unroll", "chaosgrad.systems.lopt.learned", "chaosgrad.app.api"} <= modules
    documented = _documented()
    missing = sorted(modules - set(documented))
    assert not missing, f"public modules without an API reference page: {missing}"
    nav = set(_nav())
    assert not sorted(set(documented.values()) - nav), "reference pages missing from the nav"


def test_navigation_and_pages_agree():
    nav = _nav()
    assert len(nav) == len(set(nav)), "a page twice in the nav"
    for entry in nav:
        assert (DOCS / entry).exists() or (ROOT / entry).exists(), entry
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert not sorted(pages - set(nav)), "pages that no nav entry reaches"
    # the pages the documentation promises (issue 27)
    for page in (
        "getting-started.md",
        "guides/diagnose.md",
        "guides/estimators.md",
        "guides/meta-train.md",
        "guides/cluster.md",
        "extending.md",
        "results/benchmarks.md",
        "results/scaling.md",
        "gallery/index.md",
        "gallery/figure-1.md",
        "gallery/figure-7.md",
        "reference/index.md",
    ):
        assert page in nav, page
    notebooks = sorted(f"notebooks/{p.name}" for p in (ROOT / "notebooks").glob("*.py"))
    assert notebooks and set(notebooks) <= set(nav), "a notebook without its page"


def test_readme_is_a_short_first_page():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    for heading in ("## The two commands", "## Your own system in a few lines", "## Where to go"):
        assert heading in text, heading
    # every local link of the README and of the docs pages points at a file that exists
    for path in [ROOT / "README.md", *DOCS.rglob("*.md")]:
        text = path.read_text()
        for target in re.findall(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", text) + re.findall(
            r'(?:href|src)="([^"#]+)"', text
        ):
            if "://" in target:
                continue
            base = path.parent
            resolved = (base / target).resolve()
            # the site serves notebooks/ and benchmarks/results/ at its root (docs/hooks.py)
            if not resolved.exists() and path.is_relative_to(DOCS):
                resolved = (ROOT / resolved.relative_to(DOCS.resolve())).resolve()
            assert resolved.exists(), f"{path.relative_to(ROOT)}: link to {target}"


def test_the_site_builds_strictly(tmp_path):
    """`mkdocs build --strict` (any warning fails it), the notebooks not executed here: `make
    docs` runs them. Skipped where the docs extra is not installed (`make docs` installs it)."""
    import os
    import subprocess
    import sys

    import pytest

    for module in ("mkdocs", "material", "mkdocstrings_handlers.python", "mkdocs_jupyter"):
        pytest.importorskip(module)
    env = dict(os.environ, CHAOSGRAD_DOCS_EXECUTE="false", NO_MKDOCS_2_WARNING="1")
    r = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    for page in ("index.html", "reference/systems.html", "notebooks/diagnose_your_system.html"):
        assert (tmp_path / page).exists(), page


def test_every_gallery_image_is_on_one_gallery_page_and_the_readme_shows_some():
    pages = {p.name: p.read_text() for p in (DOCS / "gallery").glob("*.md")}
    for png in (DOCS / "gallery").glob("*.png"):
        on = [name for name, text in pages.items() if f"]({png.name})" in text]
        assert len(on) == 1, (png.name, on)
        # and its numbers table, from the meta.json beside it (docs/hooks.py fills it in)
        assert f"<!-- gallery numbers: {png.stem} -->" in pages[on[0]], png.name
    readme = (ROOT / "README.md").read_text()
    thumbs = re.findall(r'<a href="docs/gallery/([\w-]+\.md)"><img src="docs/gallery/', readme)
    assert 3 <= len(thumbs) <= 4 and set(thumbs) <= set(pages)
    assert "## Gallery: the paper's figures" not in readme  # the prose lives in docs/gallery/
