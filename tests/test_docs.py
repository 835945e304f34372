"""The README and docs/ say what the code does: CI runs exactly the README's test command, every
link to a section or a file resolves, and the table of contents lists the sections in order."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _headings(text: str) -> list[tuple[int, str]]:
    out, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"(#{1,6}) (.+)", line)):
            out.append((len(m.group(1)), m.group(2)))
    return out


def test_ci_runs_exactly_the_readmes_test_command() -> None:
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    command = ci[-1]
    assert "pytest" in command
    readme = (REPO / "README.md").read_text()
    setup = readme.split("```bash", 1)[1].split("```", 1)[0]  # the set-up block comes first
    assert command in setup.splitlines()


def test_every_link_to_a_section_or_a_file_resolves() -> None:
    for doc in DOCS:
        text = doc.read_text()
        anchors = {_anchor(h) for _, h in _headings(text)}
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", prose):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            where = (doc.parent / path).resolve() if path else doc
            assert where.exists(), f"{doc.name}: link to missing {target}"
            if anchor and where.suffix == ".md":
                names = anchors if where == doc else {_anchor(h) for _, h in _headings(where.read_text())}
                assert anchor in names, f"{doc.name}: link to missing section {target}"


def test_the_table_of_contents_lists_the_sections_in_order() -> None:
    text = (REPO / "README.md").read_text()
    assert "## Contents" in text
    toc = text.split("## Contents", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"\]\(#([^)]+)\)", toc)
    sections = [_anchor(h) for level, h in _headings(text) if level == 2 and h != "Contents"]
    assert listed and [a for a in listed if a in sections] == [s for s in sections if s in listed]
    assert set(sections) <= set(listed), set(sections) - set(listed)
