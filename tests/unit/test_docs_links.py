"""The documentation holds together: every relative link of README.md, CHANGELOG.md and
docs/*.md names a file that exists and, with ``#anchor``, a heading of that page (as
GitHub makes anchors of headings); and the README links every page of docs/."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted(DOCS.glob("*.md"))]

# Pages other branches are writing now: links to them may dangle until they land. Remove a
# name once its page is on main (a test says when).
PENDING: set[str] = set()

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"(?<!!)\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.M)


def prose(text: str) -> str:
    """The page without its code: links in code blocks and spans are not links."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation but ``-``
    and ``_`` removed, spaces turned into hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: Counter[str] = Counter()
    result = set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        base = slug(heading)
        result.add(base if not seen[base] else f"{base}-{seen[base]}")
        seen[base] += 1
    return result


def links(page: Path) -> list[str]:
    return LINK.findall(prose(page.read_text(encoding="utf-8")))


def relative(target: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I)  # http:, https:, mailto:


def test_the_helpers_see_links_and_anchors() -> None:
    """The checks below would pass vacuously if these did not work."""
    assert slug("Jobs stuck `IN_QUEUE`") == "jobs-stuck-in_queue"
    assert slug("Quickstart: the emulator (5 minutes, no account)") == (
        "quickstart-the-emulator-5-minutes-no-account"
    )
    assert links(ROOT / "README.md"), "no link found in README.md"
    assert "using-it-from-your-own-celery-app" in anchors(ROOT / "README.md")
    sample = "[a](x.md) `[b](y.md)` ![img](z.png) [c [d]](w.md#h)\n```\n[e](v.md)\n```\n"
    assert LINK.findall(prose(sample)) == ["x.md", "w.md#h"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in links(page):
        if not relative(target):
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            if dest.parent == DOCS and dest.name in PENDING:
                continue
            broken.append(f"{target}: no such file")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: {dest.name} has no heading with anchor #{anchor}")
    assert broken == [], f"{page.relative_to(ROOT)}: broken links: {broken}"


def test_the_readme_links_every_docs_page() -> None:
    linked = {
        (ROOT / t.partition("#")[0]).resolve()
        for t in links(ROOT / "README.md")
        if relative(t) and t.partition("#")[0]
    }
    pages = {p.resolve() for p in DOCS.glob("*.md")} | {DOCS / name for name in PENDING}
    missing = sorted(p.name for p in pages if p not in linked)
    assert missing == [], f"README.md's Documentation list does not link: {missing}"


def test_pending_pages_are_still_pending() -> None:
    landed = sorted(name for name in PENDING if (DOCS / name).exists())
    assert landed == [], f"these pages have landed: remove them from PENDING: {landed}"
