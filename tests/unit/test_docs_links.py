"""Every relative link in README.md and docs/*.md names a file that exists and, with a #fragment,
a heading that exists there (GitHub's anchor rule), so moving a section cannot strand a link."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(text: str) -> set[str]:
    out = set()
    body = re.sub(r"```.*?```", "", text, flags=re.S)
    for h in re.findall(r"^#{1,6} (.+)$", body, re.M):
        a = re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
        out.add(a)
    return out


def test_relative_links_resolve():
    bad = []
    for page in PAGES:
        text = page.read_text()
        for target in LINK.findall(re.sub(r"```.*?```", "", text, flags=re.S)):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, frag = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                bad.append(f"{page.name}: {target} (no such file)")
            elif frag and dest.suffix == ".md" and frag not in anchors(dest.read_text()):
                bad.append(f"{page.name}: {target} (no such heading)")
    assert not bad, bad


def test_every_page_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{page.name}" in readme, f"{page.name} is not linked from the README"
