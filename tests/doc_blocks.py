"""The fenced code blocks of the documentation and their doc-test markers (run by ``tests/test_docs.py``).

A block of a runnable language runs as written unless the line right before its fence is a marker::

    <!-- doc-test: skip (why it cannot run here) -->          never run: the reason is printed in the summary
    <!-- doc-test: slow (how long it takes) -->               run only in the slow selection (``pytest -m slow``)
    <!-- doc-test: shorten (PATTERN += FLAGS; ...) -->        run with FLAGS appended to every command holding
                                                              PATTERN (the documented smoke-run flags)

Every marker names its reason (or, for ``shorten``, its flags); a malformed one fails the block's test.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SHELL_LANGUAGES = frozenset({"bash", "sh", "shell", "console"})
RUNNABLE_LANGUAGES = SHELL_LANGUAGES | {"python"}

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_MARKER = re.compile(r"^<!--\s*doc-test:\s*(?P<action>skip|slow|shorten)\s*\((?P<detail>.*\S.*)\)\s*-->$")
_INLINE_COMMENT = re.compile(r"\s+#\s")


@dataclass(frozen=True)
class Marker:
    """A ``<!-- doc-test: ACTION (DETAIL) -->`` line; ``action`` is ``invalid`` when the line does not parse."""

    action: str
    detail: str

    @classmethod
    def parse(cls, line: str) -> Marker:
        match = _MARKER.match(line.strip())
        return cls(match["action"], match["detail"].strip()) if match else cls("invalid", line.strip())

    def flags(self) -> list[tuple[str, str]]:
        """The ``(pattern, flags)`` pairs of a ``shorten`` marker."""
        pairs = [part.split("+=", 1) for part in self.detail.split(";")]
        if any(len(pair) != 2 or not pair[0].strip() or not pair[1].strip() for pair in pairs):
            raise ValueError(f"a shorten marker takes 'PATTERN += FLAGS; ...', got {self.detail!r}")
        return [(pattern.strip(), flags.strip()) for pattern, flags in pairs]


@dataclass(frozen=True)
class Block:
    """One fenced block: where it is (``document``, 1-based ``line`` of its opening fence), its language and code,
    and the marker right before it (``None`` when there is none)."""

    document: str
    line: int
    language: str
    code: str
    marker: Marker | None

    @property
    def id(self) -> str:
        return f"{self.document}:{self.line}"

    def marked(self, action: str) -> bool:
        return self.marker is not None and self.marker.action == action

    @property
    def runnable(self) -> bool:
        return self.language in RUNNABLE_LANGUAGES

    @property
    def is_shell(self) -> bool:
        return self.language in SHELL_LANGUAGES

    def script(self) -> str:
        """The code to run: console blocks keep their ``$ `` commands, shortened blocks get their flags."""
        code = self.code
        if self.language == "console":
            code = "\n".join(line[2:] for line in code.splitlines() if line.startswith("$ "))
        if self.marked("shorten"):
            code = append_flags(code, self.marker.flags())
        return code


def append_flags(code: str, flags: list[tuple[str, str]]) -> str:
    """``code`` with each ``(pattern, flags)``'s flags appended to every command line (continuations joined) that
    holds the pattern, before a trailing ``# comment``. A pattern that matches no command is an error."""
    lines = code.replace("\\\n", " ").splitlines()
    for pattern, extra in flags:
        hits = [i for i, line in enumerate(lines) if pattern in line and not line.lstrip().startswith("#")]
        if not hits:
            raise ValueError(f"no command holds {pattern!r}")
        for i in hits:
            command, comment = (_INLINE_COMMENT.split(lines[i], 1) + [""])[:2]
            lines[i] = f"{command.rstrip()} {extra}" + (f"  # {comment}" if comment else "")
    return "\n".join(lines) + "\n"


def parse_blocks(text: str, document: str) -> list[Block]:
    """Every fenced block of a Markdown ``text`` (fences of backticks or tildes, possibly indented)."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip().startswith(fence)
                    and not lines[j].strip().strip(fence[0])), len(lines))
        previous = next((line for line in reversed(lines[:i]) if line.strip()), "")
        marker = Marker.parse(previous) if previous.strip().startswith("<!-- doc-test") else None
        code = "\n".join(line[indent:] if not line[:indent].strip() else line.lstrip() for line in lines[i + 1:end])
        language = opening["info"].strip().split(" ")[0].lower()
        blocks.append(Block(document, i + 1, language, code + "\n", marker))
        i = end + 1
    return blocks


def static_documents() -> list[Path]:
    """The documentation read as it is: README, recipes, benchmark reports and the embedded GH-Feat models' cards."""
    return [ROOT / "README.md", *sorted((ROOT / "training" / "recipes").glob("*.md")),
            *sorted((ROOT / "benchmarks").glob("RESULTS*.md")),
            *sorted((ROOT / "ghfeat_hf" / "pretrained").glob("*/README.md"))]


def card_templates() -> list[Path]:
    """The model card templates (Jinja): their blocks run in cards rendered for tiny models."""
    return sorted((ROOT / "model_cards").glob("*.md"))


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()
