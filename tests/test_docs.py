"""The documentation holds together: every relative link in README.md and docs/*.md points at a file or folder of
this repository, and the README stays a front page (at most README_MAX_LINES lines; the rest lives in docs/)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 200  # a page a newcomer reads in five minutes (issue 24: ~150 lines)
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# [text](target) and ![alt](target), the target up to whitespace or ")"; and reference definitions "[id]: target"
INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")


def links(text: str) -> list[str]:
    """The link targets of a markdown text, leaving out code blocks and code spans (which are not links)."""
    text = CODE_SPAN.sub("", FENCE.sub("", text))
    return INLINE.findall(text) + REFERENCE.findall(text)


def is_relative(target: str) -> bool:
    return not (re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith(("#", "//")))


def test_the_link_parser_finds_links_and_skips_code():
    text = "[a](docs/a.md) ![b](fig.png \"t\") `[c](no.md)`\n```\n[d](no.md)\n```\n[e]: ref.md\n[f](https://x.org)"
    assert links(text) == ["docs/a.md", "fig.png", "https://x.org", "ref.md"]
    assert [t for t in links(text) if is_relative(t)] == ["docs/a.md", "fig.png", "ref.md"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files_that_exist(page):
    targets = [t for t in links(page.read_text(encoding="utf-8")) if is_relative(t)]
    missing = []
    for target in targets:
        path = unquote(target.split("#", 1)[0].split("?", 1)[0])
        if path and not (page.parent / path).resolve().exists():
            missing.append(target)
    assert not missing, f"{page.relative_to(ROOT)} links to paths that do not exist: {missing}"


def test_every_docs_page_is_linked_from_the_readme():
    readme_links = {unquote(t.split("#", 1)[0]) for t in links((ROOT / "README.md").read_text(encoding="utf-8"))}
    unlinked = [p.name for p in PAGES[1:] if f"docs/{p.name}" not in readme_links]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


def test_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines, over {README_MAX_LINES}: move detail to docs/"


def test_the_license_text_is_the_one_pyproject_declares():
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")  # (tomllib is Python 3.11+)
    assert re.search(r'^license = "Apache-2.0"$', pyproject, re.MULTILINE)
    assert re.search(r'^license-files = \["LICENSE"\]', pyproject, re.MULTILINE)
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"] and "END OF TERMS AND CONDITIONS" in text
