"""The messages docs/troubleshooting.md quotes (its ```text blocks) are still the agent's: every
plain word of a quoted line is part of a string literal in agent/ (or of os.strerror), and only
values (paths, numbers, names with digits or underscores, URLs, JSON) may come from elsewhere.
A reworded message therefore fails here until the page is updated."""

import os
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "troubleshooting.md"
LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING|ERROR) [a-z_.]+: ")
PLACEHOLDER = re.compile(r"%[-#0-9.]*[sdfr]|\{[^{}]*\}")
PLAIN = re.compile(r"^[A-Za-z]+[,.;:)]*$|^\([A-Za-z]+$")  # a word that is no value


def _body(tok: str) -> str:
    """The text of a string token without prefix and quotes (escapes of quotes undone)."""
    i = 0
    while tok[i] not in "'\"":
        i += 1
    q = tok[i:i + 3] if tok[i:i + 3] in ('"""', "'''") else tok[i]
    return tok[i + len(q):-len(q)].replace('\\"', '"').replace("\\'", "'")


def literal_pieces() -> set[str]:
    """Every constant part of every string literal below agent/ (adjacent literals joined, as
    Python does), split at its placeholders (%s, {...}). Read with tokenize, not ast."""
    pieces: set[str] = set()
    for path in (ROOT / "agent").rglob("*.py"):
        run: list[str] = []
        with open(path, "rb") as f:
            for tok in tokenize.tokenize(f.readline):
                if tok.type == tokenize.STRING:
                    run.append(_body(tok.string))
                    continue
                if tok.type in (tokenize.NL, tokenize.COMMENT) and run:
                    continue
                if run:
                    text = "".join(run)
                    run = []
                    pieces.update(p.strip() for p in PLACEHOLDER.split(text) if len(p.strip()) >= 3)
    pieces.update(os.strerror(e) for e in range(1, 134))
    return pieces


def quoted_lines(text: str) -> list[str]:
    return [ln for block in re.findall(r"```text\n(.*?)```", text, re.S)
            for ln in block.splitlines() if ln.strip()]


def uncovered_words(line: str, pieces: set[str]) -> list[str]:
    """The plain words of ``line`` no literal piece covers."""
    line = LOG_PREFIX.sub("", line)
    covered = [False] * len(line)
    for p in pieces:
        start = line.find(p)
        while start != -1:
            covered[start:start + len(p)] = [True] * len(p)
            start = line.find(p, start + 1)
    out = []
    for m in re.finditer(r"\S+", line):
        if not any(covered[m.start():m.end()]) and PLAIN.match(m.group()):
            out.append(m.group())
    return out


PIECES = literal_pieces()


def test_the_page_quotes_messages():
    assert len(quoted_lines(PAGE.read_text())) >= 15


def test_every_quoted_message_is_still_in_the_code():
    bad = {}
    for ln in quoted_lines(PAGE.read_text()):
        words = uncovered_words(ln, PIECES)
        if words:
            bad[ln[:100]] = words
    assert not bad, f"docs/troubleshooting.md quotes words the agent no longer prints: {bad}"


def test_a_reworded_message_is_caught():
    real = ("ERROR agent.export.extender: push to http://x:1/metrics/report refused (HTTP 400): "
            "{}; this report is dropped, the next is sent at the next interval "
            "(logged once per status)")
    assert uncovered_words(real, PIECES) == []
    assert "discarded," in uncovered_words(real.replace("dropped", "discarded"), PIECES)
    assert "unmounted" in uncovered_words("probe tcp_rtt unsupported: tracefs is unmounted", PIECES)
