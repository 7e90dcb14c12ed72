"""The project's Markdown files: every link between them leads somewhere.
A renamed heading or file leaves a link that GitHub renders and that goes
nowhere; these tests find one before a reader does."""
import os
import re

import pytest

import handout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md", "SPEED.md", "STUDIES.md"]
# the course handout (handout.py) leaves the developers' notebooks out: there, links to them go nowhere on purpose
LEFT_OUT = handout.NOTEBOOKS if os.path.exists(os.path.join(ROOT, handout.MANIFEST)) else ()


def anchors(text):
    """The anchors GitHub gives a Markdown file's headings: the heading's
    text as rendered (a link's text, no backticks), lower-cased, without
    punctuation but hyphens and underscores, spaces as hyphens; a repeated
    one gets -1, -2, ... Headings inside code blocks are code, not headings."""
    seen, out, in_code = {}, set(), False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        m = re.match(r"#{1,6} (.*)", line)
        if in_code or not m:
            continue
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1)).lower()
        slug = re.sub(r"[^\w\- ]", "", title).replace(" ", "-")
        out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return out


def test_anchors_as_github_makes_them():
    text = ("# A title\n## Speed (measured, 2-core CPUs)\n```bash\n# a comment, not a heading\n```\n"
            "### Studies ([`STUDIES.md`](STUDIES.md))\n## A title\n## The `--meta_judge=True` flag\n")
    assert anchors(text) == {"a-title", "speed-measured-2-core-cpus", "studies-studiesmd", "a-title-1",
                             "the---meta_judgetrue-flag"}


@pytest.mark.parametrize("doc", DOCS)
def test_every_link_between_the_docs_leads_somewhere(doc):
    if doc in LEFT_OUT:
        pytest.skip(f"{doc} is not in the course handout")
    read = lambda name: open(os.path.join(ROOT, name), encoding="utf-8").read()
    text = read(doc)
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [x for x in links if not re.match(r"[a-z]+://", x)]
    assert local or doc != "README.md"  # the README links its sections: the test reads them
    for link in local:
        path, _, anchor = link.partition("#")
        if path in LEFT_OUT:
            continue
        assert not path or os.path.exists(os.path.join(ROOT, path)), f"{doc}: {link}: no file {path}"
        if anchor:
            assert anchor in anchors(read(path) if path else text), f"{doc}: {link}: no such heading"
