"""The README is a guide that fits in one sitting, and every link in it and in docs/ leads somewhere.

Relative links (and images) in README.md and docs/*.md must name a file or folder of this repository;
a link with an anchor into a Markdown file must name one of that file's headings, as GitHub spells
the heading's anchor. Links inside code are not links.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MAX_README_LINES = 250
MAX_README_WORDS = 2500

FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[(?:[^\]\n]|\][^(\n])*?\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)


def pages() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def prose(text: str) -> str:
    """The text without fenced code blocks and inline code, where brackets are not links."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def relative_links(page: Path) -> list[str]:
    targets = LINK.findall(prose(page.read_text(encoding="utf-8")))
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t, re.I)]  # http:, https:, mailto:


def github_anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        slug = github_anchor(heading)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_the_pages_exist_and_link_into_docs():
    assert (REPO / "docs").is_dir()
    readme_links = relative_links(REPO / "README.md")
    assert any(t.startswith("docs/") for t in readme_links), "the README links into docs/"


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if REPO not in dest.parents and dest != REPO:
            broken.append(f"{target} (outside the repository)")
        elif not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.relative_to(REPO)})")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


def test_the_readme_is_a_guide_of_bounded_length():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    lines, words = text.count("\n"), len(text.split())  # as `wc -l -w README.md` counts them
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines (at most {MAX_README_LINES})"
    assert words <= MAX_README_WORDS, f"README.md has {words} words (at most {MAX_README_WORDS})"


def test_the_checker_sees_links_and_anchors_as_github_does(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Data preparation at scale (`bench_prepare.py`)\n## Stops\n## Stops\n"
                    "See [a](other.md#x) and ![b](img.png \"title\") but not `[c](code.md)`.\n"
                    "```\n[d](fenced.md)\n```\n[e](https://example.com) [f](#stops-1)\n")
    assert relative_links(page) == ["other.md#x", "img.png", "#stops-1"]
    assert anchors(page) == {"data-preparation-at-scale-bench_preparepy", "stops", "stops-1"}
