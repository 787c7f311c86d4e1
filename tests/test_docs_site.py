"""The documentation site builds with ``mkdocs build --strict``, and no internal link of
the built site dangles: every ``href`` and ``src`` that points inside the site reaches a
file, and every ``#anchor`` an element of the page it points to. External links are not
fetched.

mkdocs checks the links it writes from Markdown; this checks the HTML, so it also sees
raw HTML, the API reference's cross-references and the theme's own links. Skipped where
mkdocs is not installed (``pip install '.[docs]'``; ``.ci/run`` runs this file after
installing it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINKING = {("a", "href"), ("link", "href"), ("img", "src"), ("script", "src"), ("source", "src"), ("iframe", "src")}

pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install '.[docs]')")
pytest.importorskip("mkdocstrings", reason="mkdocstrings is not installed (pip install '.[docs]')")


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is None:
                continue
            if name == "id" or (tag == "a" and name == "name"):
                self.ids.add(value)
            if (tag, name) in LINKING:
                self.links.append(value)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _target_file(site: Path, page: Path, path: str) -> Path:
    """The file a link's path names, relative to ``page`` (or to the site root if absolute)."""
    base = site if path.startswith("/") else page.parent
    target = (base / unquote(path.lstrip("/"))).resolve() if path else page
    if path.endswith("/") or target.is_dir():
        target = target / "index.html"
    return target


def dangling_links(site: Path) -> list[str]:
    """Every internal link of the built site ``site`` that reaches no file or no anchor, as
    ``page: link (why)``."""
    site = site.resolve()
    pages = {path.resolve(): _parse(path) for path in site.rglob("*.html")}
    problems = []
    for page, parsed in sorted(pages.items()):
        for link in parsed.links:
            parts = urlsplit(link)
            if parts.scheme or parts.netloc or link.startswith(("mailto:", "javascript:", "data:")):
                continue  # external: not fetched
            target = _target_file(site, page, parts.path)
            where = f"{page.relative_to(site)}: {link}"
            if not target.is_relative_to(site):
                problems.append(f"{where} (leaves the site)")
            elif not target.is_file():
                problems.append(f"{where} (no file {target.relative_to(site)})")
            elif parts.fragment and target.suffix == ".html":
                anchor = unquote(parts.fragment)
                ids = pages[target].ids if target in pages else _parse(target).ids
                if anchor not in ids:
                    problems.append(f"{where} (no anchor #{anchor} in {target.relative_to(site)})")
    return problems


def build(config: Path, site: Path, strict: bool = True) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "mkdocs", "build", "-q", "-f", str(config), "-d", str(site)]
    if strict:
        command.append("--strict")
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    result = build(ROOT / "mkdocs.yml", out)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    return out


def test_the_site_builds_strict_with_every_page(site: Path) -> None:
    for page in [
        "index.html",
        "getting-started/index.html",
        "guides/frameworks/index.html",
        "experiments/rln-boston/index.html",
        "benchmarks/index.html",
        "reference/rln/index.html",
        "reference/extension/index.html",
        "contributing/index.html",
        "changelog/index.html",
    ]:
        assert (site / page).is_file(), page


def test_no_internal_link_dangles(site: Path) -> None:
    assert dangling_links(site) == []


def test_the_reference_renders_the_docstrings_and_their_math(site: Path) -> None:
    """mkdocstrings rendered the classes' docs, and the equations reach MathJax as arithmatex
    blocks (the reST math of the docstrings converted), not as literal ``.. math::``."""
    rln = (site / "reference/rln/index.html").read_text()
    assert 'id="torch_rln.RLNOptimizer"' in rln
    assert 'id="torch_rln.rln"' in rln
    assert "counterfactual-loss gradient" in rln  # the class docstring
    assert '<div class="arithmatex">' in rln
    assert "\\begin{aligned}" in rln
    assert '<span class="arithmatex">\\(\\Theta\\)</span>' in rln
    for page in ["reference/rln", "reference/rmsln", "reference/extension"]:
        text = (site / page / "index.html").read_text()
        for raw in (".. math::", ":class:`", ":func:`", ":mod:`", ":meth:`"):
            assert raw not in text, (page, raw)
    extension = (site / "reference/extension/index.html").read_text()
    for name in ["RegularizedOptimizer", "Implementations", "CompiledKernel", "state_dtype", "checks"]:
        assert f'id="torch_rln.{name}"' in extension, name


def test_a_dangling_link_is_found(tmp_path: Path) -> None:
    """The checker fails on a broken page: a copy of the docs with one page whose raw-HTML
    links (which mkdocs does not check) point nowhere."""
    copy = tmp_path / "repo"
    copy.mkdir()
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    for name in ["docs", "torch_rln"]:
        shutil.copytree(ROOT / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ["CONTRIBUTING.md", "CHANGELOG.md", "benchmarks/README.md"]:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, copy / name)
    (copy / "docs/guides/broken.md").write_text(
        "# Broken\n\n"
        '<a href="../nowhere/">a page that does not exist</a>\n'
        '<a href="../frameworks/#no-such-section">a section that does not exist</a>\n'
        '<a href="#broken">this page\'s own heading, which exists</a>\n\n'
        '<img src="../../img/missing.png" alt="a figure that is not there">\n'
    )
    result = build(copy / "mkdocs.yml", tmp_path / "site", strict=False)  # the page is in no nav
    assert result.returncode == 0, result.stderr
    problems = dangling_links(tmp_path / "site")
    assert len(problems) == 3, problems
    assert any("../nowhere/" in p and "no file" in p for p in problems)
    assert any("#no-such-section" in p and "no anchor" in p for p in problems)
    assert any("missing.png" in p for p in problems)
