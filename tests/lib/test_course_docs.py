"""The course documents (course/*.md, README.md): links resolve, the syllabus covers the course, the numbers add up.

No network access: a relative link must name a file or folder inside the repository (and, for a
Markdown target with a ``#fragment``, one of that file's headings); an absolute link must be a
well-formed http(s) URL. The syllabus must name every lecture in lectures/ (in the row of its number)
and every assignment in solutions/, list lectures 00-14 and assignments a01-a07, and cite only
papers the reading list has. The checker itself is tested on a small document with known good and
broken links, so a checker that finds nothing fails.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

REPO = Path(__file__).resolve().parents[2]
COURSE = REPO / "course"
DOCUMENTS = ("syllabus.md", "seminar.md", "reading_list.md", "instructor_guide.md")
DOCS = sorted(COURSE.glob("*.md")) + [REPO / "README.md"]
LECTURES = sorted(REPO.glob("lectures/[0-9][0-9]_*.ipynb"))
ASSIGNMENTS = sorted(p for p in REPO.glob("solutions/a[0-9][0-9]_*") if p.is_dir())

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
AUTOLINK = re.compile(r"<([A-Za-z][A-Za-z0-9+.-]*:[^<>\s]+)>")
HOST = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}(?::\d+)?$")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
ARXIV_ABS = re.compile(r"^https://arxiv\.org/abs/(\d{2})(\d{2})\.(\d{4,5})$")


def prose_lines(text: str) -> list[str]:
    """The document's lines with fenced code blocks blanked and inline code spans replaced by spaces.

    Line numbers are kept, so problems can name them; code never counts as a link or a heading.
    """
    lines, fence = [], None
    for line in text.splitlines():
        match = FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)[0] * 3
            lines.append("")
        elif fence is not None:
            if line.strip().startswith(fence):
                fence = None
            lines.append("")
        else:
            lines.append(CODE_SPAN.sub(lambda m: " " * len(m.group(0)), line))
    return lines


def links(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every inline link or image, reference definition and autolink."""
    found = []
    for number, line in enumerate(prose_lines(text), start=1):
        for pattern in (INLINE_LINK, REFERENCE_DEF, AUTOLINK):
            for match in pattern.finditer(line):
                found.append((number, match.group(1).strip("<>")))
    return found


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: link text kept, lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The heading anchors of a Markdown file; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    result = set()
    for line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        result.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return result


def link_problems(doc: Path, root: Path = REPO) -> list[str]:
    """Every link of ``doc`` that does not resolve inside ``root`` or is not a well-formed http(s) URL."""
    problems = []
    for number, target in links(doc.read_text(encoding="utf-8")):
        where = f"{doc.name}:{number}: {target!r}"
        if any(c.isspace() for c in target):
            problems.append(f"{where} contains whitespace")
            continue
        parts = urlsplit(target)
        if parts.scheme or target.startswith("//"):
            if parts.scheme not in ("http", "https"):
                problems.append(f"{where} is not an http(s) link")
            elif not HOST.match(parts.netloc):
                problems.append(f"{where} has no valid host name")
            continue
        path = unquote(parts.path)
        resolved = (doc.parent / path).resolve() if path else doc.resolve()
        try:
            resolved.relative_to(root.resolve())
        except ValueError:
            problems.append(f"{where} points outside the repository")
            continue
        if not resolved.exists():
            problems.append(f"{where} names a file that does not exist")
            continue
        if parts.fragment and resolved.suffix == ".md" and parts.fragment not in anchors(resolved):
            problems.append(f"{where}: {resolved.name} has no heading with the anchor #{parts.fragment}")
    return problems


def section(text: str, title: str) -> str:
    """The text under the ``## title`` heading, up to the next heading of level 2."""
    match = re.search(rf"^## {re.escape(title)}\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"no section '## {title}'"
    return match.group(1)


def table_rows(text: str) -> list[list[str]]:
    """The cells of every Markdown table row in ``text`` (header and separator rows included)."""
    return [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in text.splitlines() if line.strip().startswith("|")]


def syllabus() -> str:
    return (COURSE / "syllabus.md").read_text(encoding="utf-8")


def lecture_rows() -> dict[str, list[str]]:
    """Lecture number ("00") -> the cells of its row in the syllabus's lecture table."""
    rows = [row for row in table_rows(section(syllabus(), "Lectures")) if re.fullmatch(r"\d\d", row[0])]
    numbers = [row[0] for row in rows]
    assert len(numbers) == len(set(numbers)), f"a lecture number appears twice in the syllabus table: {numbers}"
    return {row[0]: row for row in rows}


def test_the_course_documents_exist():
    missing = [name for name in DOCUMENTS if not (COURSE / name).is_file()]
    assert not missing, f"course/ lacks {missing}"


def test_the_checker_finds_broken_links_and_ignores_code(tmp_path):
    (tmp_path / "notes.md").write_text("# Notes\n\n## Part two\n")
    (tmp_path / "data").mkdir()
    doc = tmp_path / "doc.md"
    doc.write_text(
        "# Title\n"
        "[good](notes.md) [folder](data/) [anchor](notes.md#part-two) [self](#title) ![img](notes.md)\n"
        "[web](https://example.org/a?b=c#d) <https://example.org/auto>\n"
        "[missing](nope.md) [bad anchor](notes.md#part-three) [bad self](#nothing)\n"
        "[outside](../elsewhere.md) [ftp](ftp://example.org/f) [no host](https://localhost/x)\n"
        "`[in code](ignored.md)`\n"
        "```\n[in a fence](ignored.md)\n```\n"
        "[ref]: missing-ref.md\n"
    )
    problems = link_problems(doc, root=tmp_path)
    flagged = sorted(p.split(": ", 1)[1].split("'")[1] for p in problems)
    assert flagged == sorted([
        "nope.md", "notes.md#part-three", "#nothing", "../elsewhere.md",
        "ftp://example.org/f", "https://localhost/x", "missing-ref.md",
    ]), problems


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        ("How the final grade is composed", "how-the-final-grade-is-composed"),
        ("2. Distribute", "2-distribute"),
        ("Lecture 01 — autoencoders", "lecture-01--autoencoders"),
        ("1. Regenerate the releases: `make assignments`", "1-regenerate-the-releases-make-assignments"),
        ("See [the guide](guide.md)", "see-the-guide"),
    ],
)
def test_github_slugs(heading, slug):
    assert github_slug(heading) == slug


def test_a_repeated_heading_gets_a_numbered_anchor(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("# Notes\n## Notes\n```\n# not a heading\n```\n")
    assert anchors(doc) == {"notes", "notes-1"}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_resolves_or_is_a_well_formed_url(doc):
    problems = link_problems(doc)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_the_syllabus_lists_lectures_00_to_14():
    numbers = sorted(lecture_rows())
    assert numbers == [f"{n:02d}" for n in range(15)], f"the syllabus's lecture table has rows {numbers}, expected 00 to 14"


def test_every_lecture_on_disk_is_named_in_its_row_of_the_syllabus():
    assert LECTURES, "no lectures found in lectures/"
    rows = lecture_rows()
    for path in LECTURES:
        number = path.name[:2]
        assert number in rows, f"{path.name}: the syllabus has no row for lecture {number}"
        assert path.name in rows[number][1], (
            f"{path.name} is not named in the syllabus row of lecture {number} ({rows[number][1]!r}): "
            "link it there, e.g. [`NN_name.ipynb`](../lectures/NN_name.ipynb)"
        )


def test_the_syllabus_lists_assignments_a01_to_a07_and_every_one_in_solutions():
    text = section(syllabus(), "Graded notebooks")
    listed = [m.group(1) for row in table_rows(text) if (m := re.match(r"\[?(a\d\d_\w+)", row[0]))]
    assert [name[:3] for name in listed] == [f"a{n:02d}" for n in range(1, 8)], listed
    assert ASSIGNMENTS, "no assignments found in solutions/"
    for path in ASSIGNMENTS:
        assert path.name in listed, f"solutions/{path.name} is not in the syllabus's table of graded notebooks ({listed})"


def test_the_readme_links_every_course_document():
    targets = {target for _, target in links((REPO / "README.md").read_text(encoding="utf-8"))}
    missing = [name for name in DOCUMENTS if f"course/{name}" not in targets]
    assert not missing, f"README.md does not link {missing}"


def test_the_grade_weights_add_up_to_100_percent():
    rows = table_rows(section(syllabus(), "How the final grade is composed"))
    weights = [int(m.group(1)) for row in rows if len(row) > 1 and (m := re.fullmatch(r"(\d+)%", row[1]))]
    assert len(weights) >= 2 and sum(weights) == 100, weights


def test_the_presentation_rubric_adds_up_to_its_total():
    text = (COURSE / "seminar.md").read_text(encoding="utf-8")
    rows = table_rows(section(text, "Presentation rubric"))
    points = {row[0]: int(row[-1].strip("*")) for row in rows if re.fullmatch(r"\**\d+\**", row[-1])}
    total = points.pop("**total**")
    assert len(points) >= 5 and sum(points.values()) == total == 100, points


def reading_list_entries() -> list[str]:
    """The bullet entries of the reading list, each joined into one line."""
    entries: list[str] = []
    for line in (COURSE / "reading_list.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("- "):
            entries.append(line[2:])
        elif line.startswith("  ") and entries:
            entries[-1] += " " + line.strip()
    return entries


def test_every_reading_list_entry_has_authors_a_year_a_link_and_a_lecture():
    entries = reading_list_entries()
    assert len(entries) >= 30, f"only {len(entries)} entries"
    for entry in entries:
        assert re.match(r"\*\*[^*]+ \(\d{4}[ab]?\)\.\*\*", entry), f"an entry without 'Authors (year).' in bold: {entry[:80]!r}"
        assert re.search(r"[Ll]ectures? \d\d", entry), f"an entry that names no lecture: {entry[:80]!r}"
        if "See lecture" not in entry:
            assert re.search(r"\]\(https?://", entry), f"an entry without a link: {entry[:80]!r}"


def test_arxiv_links_are_abstract_pages_with_plausible_identifiers_and_no_duplicates():
    urls = [target for _, target in links((COURSE / "reading_list.md").read_text(encoding="utf-8")) if "arxiv.org" in target]
    assert len(urls) >= 25
    for url in urls:
        match = ARXIV_ABS.match(url)
        assert match, f"{url}: link arXiv papers as https://arxiv.org/abs/YYMM.NNNNN"
        year, month, number = match.groups()
        assert 7 <= int(year) and 1 <= int(month) <= 12, f"{url}: not an arXiv identifier of the YYMM.NNNNN scheme"
        assert len(number) == (4 if int(year) < 15 else 5), f"{url}: arXiv numbers have 4 digits before 2015 and 5 after"
    duplicates = sorted({u for u in urls if urls.count(u) > 1})
    assert not duplicates, f"papers listed twice: {duplicates}"


def test_every_paper_the_syllabus_cites_is_in_the_reading_list():
    entries = reading_list_entries()
    authors = [entry.split(".**", 1)[0] for entry in entries]
    cited = []
    for row in lecture_rows().values():
        for citation in row[3].split(";"):
            citation = citation.strip()
            if citation in ("", "—"):
                continue
            match = re.fullmatch(r"(.+?)(?: et al\.| & [^\d]+?)? ((?:\d{4}[ab]?)(?:, \d{4}[ab]?)*)", citation)
            assert match, f"unexpected citation format in the syllabus: {citation!r}"
            for year in match.group(2).split(", "):
                cited.append((match.group(1), year))
    assert len(cited) >= 25
    missing = [(name, year) for name, year in cited if not any(name in a and f"({year})" in a for a in authors)]
    assert not missing, f"cited in the syllabus but not in the reading list: {missing}"
