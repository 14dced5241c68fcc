"""Every relative link in the README and the documents under docs/ resolves: the file exists, and an anchor
names a heading of that file (GitHub's rule: lower case, punctuation but ``-`` and ``_`` dropped, spaces to
``-``, ``-1``, ``-2`` ... on repeats). Sections move between the README and docs/; a link left pointing at
the old place is a dead end for a reader."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The heading anchors of a Markdown file (headings inside fenced code are not headings)."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        match = None if fenced else re.match(r"^#{1,6}\s+(.*)", line)
        if match:
            slug = _slug(match.group(1))
            found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return found


def dead_links(path: Path) -> list[str]:
    out = []
    for match in LINK.finditer(path.read_text(encoding="utf-8")):
        target = match.group(1)
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        file, _, fragment = target.partition("#")
        dest = (path.parent / file) if file else path
        if not dest.exists():
            out.append(f"{path.name}: {target} (no such file)")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            out.append(f"{path.name}: {target} (no heading with that anchor in {dest.name})")
    return out


def test_the_slug_rule_matches_githubs_on_the_headings_we_link_to():
    assert _slug("Router variants (`router.kind`) and baselines") == "router-variants-routerkind-and-baselines"
    assert _slug("RouteLLM MMLU, 1,500 labels") == "routellm-mmlu-1500-labels"
    assert _slug("One MLP in the chosen head's place (`router.distill`)") == \
        "one-mlp-in-the-chosen-heads-place-routerdistill"


def test_every_relative_link_in_the_readme_and_docs_resolves(tmp_path):
    assert len(DOCUMENTS) >= 4 and sum(len(LINK.findall(p.read_text())) for p in DOCUMENTS) > 50
    assert [d for p in DOCUMENTS for d in dead_links(p)] == []
    # and the check finds a dead one: a heading renamed under a link
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n## Kept (`x.y`)\n\nSee [kept](#kept-xy), [gone](#gone) and [file](missing.md).\n"
                    "```bash\n# not a heading\n```\n[code](#not-a-heading)\n")
    assert dead_links(page) == ["page.md: #gone (no heading with that anchor in page.md)",
                                "page.md: missing.md (no such file)",
                                "page.md: #not-a-heading (no heading with that anchor in page.md)"]
