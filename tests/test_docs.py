"""The docs stay true to the tree and the CLI: every relative link resolves (anchors included), and every
`nnunet-warmer ...` line they show parses with the real argument parser."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from warmer.cli import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
PAGES = sorted([*DOCS, ROOT / "tests" / "README.md", ROOT / "bench" / "RESULTS.md"])
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE_SPAN = re.compile(r"`([^`\n]+)`")
COMMAND_NAMES = {c.__name__.rsplit(".", 1)[1].removesuffix("_").removesuffix("_command") for c in COMMANDS}
INVOCATION = re.compile(r"nnunet-warmer\s+([a-z][\w-]*)")
SHELL_END = re.compile(r"\s*(&&|\|\||[;|)`]|\s#)")


def prose(text: str) -> str:
    """`text` without its fenced code blocks (a `#` line there is a comment, not a heading)."""
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(line.lstrip("#")) for line in prose(page.read_text()).splitlines() if line.startswith("#")}


def broken_links(page: Path) -> list[str]:
    problems = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            problems.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{target}: no such heading")
    return problems


def shown_invocations(text: str) -> list[str]:
    """Each `nnunet-warmer COMMAND ARGS` in the code blocks and code spans of `text`, up to the end of its shell
    command (`&&`, `||`, `;`, `|`, `)`, a comment), with continued lines joined. A code span that only names a
    command (`nnunet-warmer warm`, `nnunet-warmer warm ...`) shows no command line."""
    lines = [line for block in FENCE.findall(text) for line in block.replace("\\\n", " ").splitlines()]
    return [invocation for line in lines + [f"`{span}`" for span in CODE_SPAN.findall(prose(text))]
            for invocation in _invocations(line)]


def _invocations(line: str) -> list[str]:
    found = []
    for match in INVOCATION.finditer(line):
        if match.group(1) not in COMMAND_NAMES:
            continue
        rest = line[match.start():]
        end = SHELL_END.search(rest)
        invocation = rest[:end.start()] if end else rest
        names_a_command = len(invocation.split()) == 2 or "..." in invocation.split()
        if not (line[match.start() - 1:match.start()] == "`" and names_a_command):
            found.append(invocation)
    return found


def parse_error(invocation: str) -> str | None:
    """What the real parser says about `invocation`, None when it parses."""
    argv = shlex.split(invocation)[1:]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(argv)
    except SystemExit as e:
        return None if e.code == 0 else err.getvalue().strip().splitlines()[-1]
    return None


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken_links(page) == []


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_line_shown_parses(page: Path) -> None:
    problems = [f"{line}: {error}" for line in shown_invocations(page.read_text())
                if (error := parse_error(line)) is not None]
    assert problems == []


def test_the_pages_show_every_command_and_the_checks_can_fail(tmp_path: Path) -> None:
    shown = [line for page in DOCS for line in shown_invocations(page.read_text())]
    assert {line.split()[1] for line in shown} == COMMAND_NAMES
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[a](missing.md) [b](#title) [c](#nope)\n\n"
                    "```\neval \"$(nnunet-warmer env --cache-dir c)\" && nnunet-warmer warm -d 4 --no-such-flag\n"
                    "see `nnunet-warmer status` and `nnunet-warmer run ...`\n```\n")
    assert broken_links(page) == ["missing.md: no such file", "#nope: no such heading"]
    assert shown_invocations(page.read_text()) == ["nnunet-warmer env --cache-dir c",
                                                   "nnunet-warmer warm -d 4 --no-such-flag"]
    assert parse_error("nnunet-warmer env --cache-dir c") is None
    assert "unrecognized arguments: --no-such-flag" in (parse_error("nnunet-warmer warm -d 4 --no-such-flag") or "")

