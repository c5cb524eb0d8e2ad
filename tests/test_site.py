"""The documentation site as a reader gets it: built with mkdocs, maths typeset by MathJax from
arithmatex's markup, no control characters, no build helper published, a home page that starts
with installing and a first command."""

import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
RAW_MATH = re.compile(r"\\\(|\\\[|\$\$|\$\\|\\frac|\\sqrt")


class Text(HTMLParser):
    """The text of a page outside code, scripts and arithmatex's maths elements."""

    SKIPPED = {"code", "pre", "script", "style"}

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.stack: list[bool] = []
        self.parts: list[str] = []
        self.maths = 0

    def handle_starttag(self, tag, attrs):
        skipped = tag in self.SKIPPED or "arithmatex" in (dict(attrs).get("class") or "")
        self.maths += "arithmatex" in (dict(attrs).get("class") or "")
        if tag in ("br", "img", "meta", "link", "input", "hr"):
            return
        self.stack.append(skipped)
        self.depth += skipped

    def handle_endtag(self, tag):
        if tag in ("br", "img", "meta", "link", "input", "hr") or not self.stack:
            return
        self.depth -= self.stack.pop()

    def handle_data(self, data):
        if not self.depth:
            self.parts.append(data)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("mkdocs")
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_pages_have_no_control_characters_and_no_raw_maths(site):
    pages = sorted(site.rglob("*.html"))
    assert len(pages) > 10
    for page in pages:
        html = page.read_text()
        assert not CONTROL.search(html), f"{page.relative_to(site)} holds a control character"
        text = Text()
        text.feed(html)
        raw = RAW_MATH.findall("".join(text.parts))
        assert not raw, f"{page.relative_to(site)}: maths outside arithmatex's markup: {raw[:5]}"


def test_the_maths_is_marked_up_for_mathjax(site):
    page = (site / "how-it-works" / "index.html").read_text()
    text = Text()
    text.feed(page)
    assert text.maths >= 10
    assert r"\bar\alpha" in page
    assert "javascripts/mathjax.js" in page and "mathjax@3" in page
    assert (site / "javascripts" / "mathjax.js").is_file()


def test_no_build_helper_is_published(site):
    assert not list(site.rglob("*.py"))


def test_the_home_page_starts_with_install_and_a_first_command(site):
    page = (site / "index.html").read_text()
    headings = re.findall(r"<h2[^>]*>(.*?)<", page)
    assert headings[0].startswith("Install"), headings
    text = re.sub(r"<[^>]+>", "", page)  # code blocks are split into highlighted spans
    install = text.index(headings[0])
    assert text.index("pip install", install) < text.index("tiec generate", install)
    assert page.index(">" + headings[0]) < page.index("assets/grid.png")  # then the grid it makes
    assert "assets/bench/" in page  # the headline quality-against-compute plot
