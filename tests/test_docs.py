"""The docs agree with the code: docs/design.md's module map names every module of the three
packages and nothing else, and every relative link of the README and the docs pages reaches a file.
"""

import re

from helpers import REPO, doc_text

PACKAGES = ("compscale", "workers", "orchestrator")


def module_map() -> list[str]:
    """The module paths docs/design.md's "Module map" lists, one line each: - `path`: what."""
    section = doc_text("design.md").split("### Module map\n", 1)[1].split("\n#", 1)[0]
    return re.findall(r"^- `([\w/]+\.py)`:", section, re.M)


def test_the_module_map_names_every_module_once_and_no_other():
    named = module_map()
    modules = {
        str(path.relative_to(REPO))
        for package in PACKAGES
        for path in (REPO / package).rglob("*.py")
    }
    assert len(named) == len(set(named)), sorted(m for m in named if named.count(m) > 1)
    assert sorted(modules - set(named)) == [], "modules docs/design.md's map lacks"
    assert sorted(set(named) - modules) == [], "modules docs/design.md's map names but none exist"


def pages() -> list[str]:
    """The README and every Markdown page under docs/, as paths relative to the repository."""
    docs = sorted(str(path.relative_to(REPO)) for path in (REPO / "docs").rglob("*.md"))
    return ["README.md", *docs]


def test_every_relative_link_of_the_readme_and_docs_reaches_a_file():
    broken = []
    for page in pages():
        text = (REPO / page).read_text()
        text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)  # code blocks hold no links
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # a URL or an anchor on the same page
            if not ((REPO / page).parent / target.split("#")[0]).exists():
                broken.append(f"{page}: {target}")
    assert broken == []


def test_the_readme_is_one_screenful_and_lists_every_docs_page():
    readme = doc_text("README.md")
    assert len(readme.splitlines()) <= 200
    listed = set(re.findall(r"^\| \[(docs/[\w-]+\.md)\]", readme, re.M))
    assert listed == {str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md")}
