"""`make slides`: every lecture reads as a talk, and an exported deck works offline in a real browser.

One lecture is exported with `aelab.slides` (what `make slides` runs) into a temporary folder; the
HTML may load scripts and style sheets only from files next to it, and headless Chromium, opening it
from disk, must see reveal.js started and MathJax typeset the equations.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[2]
LECTURES = sorted((REPO / "lectures").glob("[0-9][0-9]_*.ipynb"))
DECK = "11_superposition"  # a small lecture with display equations, widgets and figures
SLIDE_TYPES = {"slide", "subslide", "fragment", "-", "skip", "notes"}
SOURCE = re.compile(r"<(script|link)\b[^>]*?\b(src|href)\s*=\s*[\"']([^\"']*)[\"']", re.I)


@pytest.mark.parametrize("path", LECTURES, ids=[p.stem for p in LECTURES])
def test_every_cell_carries_slide_metadata(path):
    nb = nbformat.read(path, as_version=4)
    missing = [i for i, cell in enumerate(nb.cells) if cell.metadata.get("slideshow", {}).get("slide_type") not in SLIDE_TYPES]
    assert not missing, f"{path.name}: cells {missing[:10]} have no slideshow.slide_type (one of {sorted(SLIDE_TYPES)})"
    assert nb.cells[0].metadata["slideshow"]["slide_type"] == "slide", f"{path.name} must open with a slide"


@pytest.fixture(scope="module")
def deck(tmp_path_factory) -> Path:
    from aelab.slides import export

    out = tmp_path_factory.mktemp("slides")
    (html,) = export([REPO / "lectures" / f"{DECK}.ipynb"], out, REPO / ".cache" / "slides")
    return html


def test_deck_loads_only_files_next_to_it(deck):
    html = deck.read_text()
    sources = [(tag, url) for tag, _, url in SOURCE.findall(html)]
    assert sources, "the deck loads no script or style sheet at all"
    remote = [url for _, url in sources if urlsplit(url).scheme or url.startswith("//")]
    assert not remote, f"the deck loads from the network: {remote}"
    assert not re.search(r"""(import\s*\(?|require\(\s*\[?)\s*["']https?://""", html), "a script imports from the network"
    for _, url in sources:
        path = deck.parent / urlsplit(url).path
        assert path.is_file(), f"the deck refers to {url}, which the export did not write"
    for needed in ("reveal.js/dist/reveal.js", "reveal.js/plugin/notes/notes.js", "mathjax/MathJax.js", "html-manager/embed-amd.js"):
        assert needed in html and (deck.parent / "assets" / needed).is_file(), needed


def test_deck_starts_reveal_and_typesets_math_in_chromium(deck, chromium):
    url = deck.as_uri()
    dom = chromium.dom(url, budget_ms=20000)
    reveal = re.search(r'<div class="([^"]*\breveal\b[^"]*)"', dom)
    assert reveal and "ready" in reveal.group(1).split(), f"reveal.js did not start: {reveal.group(0) if reveal else 'no .reveal element'}"
    assert re.search(r'<section[^>]*class="[^"]*\bpresent\b', dom), "no slide is shown"
    typeset = len(re.findall(r'class="MathJax(?:_Display|_CHTML|_SVG)?"', dom))
    assert typeset > 0, "MathJax typeset no equation"
    errors = re.findall(r'class="MathJax_Error"[^>]*>.*?</span>', dom)
    assert not errors and "Math Processing Error" not in dom, f"MathJax could not typeset {len(errors)} equations: {errors[:2]}"
    assert "$$" not in re.sub(r"<script.*?</script>", "", dom, flags=re.S), "an equation was left as TeX source"
    chromium.screenshot(url, f"slides-{DECK}", budget_ms=20000)
