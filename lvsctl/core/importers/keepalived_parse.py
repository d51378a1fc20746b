"""Read keepalived.conf into a tree of statements: includes, comments, quotes, braces, with bounds.

keepalived's grammar is line based: a statement is the words of a line, ``{`` opens its block
(on the same line or alone on the next), ``}`` closes it; ``!`` and ``#`` start a comment;
``include GLOB`` splices other files in where it stands (relative to the including file).
Every input is bounded (file size, total size, include depth and count, nesting, words), and
anything malformed is one ``SourceError`` naming the file and line.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lvsctl.core.importers.common import SourceError, Where

MAX_FILE_BYTES = 4 * 1024 * 1024  # one file; real keepalived.conf files are kilobytes
MAX_TOTAL_BYTES = 16 * 1024 * 1024  # every included file together
MAX_INCLUDE_DEPTH = 8
MAX_FILES = 256
MAX_NESTING = 16  # keepalived's deepest real block (virtual_server/real_server/check/url) is 4
MAX_WORDS = 1_000_000
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Word:
    text: str
    quoted: bool = False


@dataclass
class Statement:
    """A keyword, its arguments and, for a block, its children."""

    words: list[Word]
    where: Where
    block: list[Statement] | None = None
    block_where: Where | None = None

    @property
    def keyword(self) -> str:
        """The first word, in lower case (keywords are matched in any case)."""
        return self.words[0].text.lower()

    @property
    def args(self) -> list[str]:
        return [w.text for w in self.words[1:]]

    @property
    def text(self) -> str:
        return " ".join(w.text for w in self.words)

    def children(self) -> list[Statement]:
        return self.block or []


@dataclass
class _Line:
    words: list[Word]
    where: Where


@dataclass
class _Reader:
    """Walks files and includes into one stream of lines, counting against the bounds."""

    files: int = 0
    total: int = 0
    words: int = 0
    stack: list[Path] = field(default_factory=list)

    def lines(self, path: Path, label: str, included_at: Where | None) -> Iterator[_Line]:
        real = path.resolve()
        at = included_at or Where(label, 1)
        if real in self.stack:
            chain = " -> ".join(p.name for p in [*self.stack, real])
            raise SourceError(at, f"include loop: {chain}")
        if len(self.stack) >= MAX_INCLUDE_DEPTH:
            raise SourceError(at, f"includes nest deeper than {MAX_INCLUDE_DEPTH} files")
        self.files += 1
        if self.files > MAX_FILES:
            raise SourceError(at, f"more than {MAX_FILES} files are included")
        data = self._read(path, label, at)
        self.stack.append(real)
        try:
            yield from self._scan(data, path, label)
        finally:
            self.stack.pop()

    def _read(self, path: Path, label: str, at: Where) -> str:
        try:
            size = path.stat().st_size
            if size > MAX_FILE_BYTES:
                raise SourceError(Where(label, 1), f"the file is {size} bytes; an import reads "
                                  f"at most {MAX_FILE_BYTES // (1024 * 1024)} MiB per file")
            with path.open("rb") as handle:
                raw = handle.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise SourceError(at, f"cannot read {label}: {exc.strerror or exc}") from None
        if len(raw) > MAX_FILE_BYTES:  # grew while being read
            raise SourceError(Where(label, 1), f"the file is larger than "
                              f"{MAX_FILE_BYTES // (1024 * 1024)} MiB")
        self.total += len(raw)
        if self.total > MAX_TOTAL_BYTES:
            raise SourceError(at, f"the included files add up to more than "
                              f"{MAX_TOTAL_BYTES // (1024 * 1024)} MiB")
        if b"\0" in raw:
            line = raw[: raw.index(b"\0")].count(b"\n") + 1
            raise SourceError(Where(label, line), "a NUL byte: this is not a keepalived.conf "
                              "(text) file")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            raise SourceError(Where(label, line), "not UTF-8 text") from None

    def _scan(self, data: str, path: Path, label: str) -> Iterator[_Line]:
        pending: list[Word] = []
        pending_at = 0
        for number, raw in enumerate(data.splitlines(), 1):
            where = Where(label, number)
            words, continued = self._split(raw, where)
            if pending:
                words = pending + words
                where = Where(label, pending_at)
            if continued:
                if not pending:
                    pending_at = number
                pending = words
                continue
            pending = []
            if not words:
                continue
            if words[0].text.lower() == "include" and not words[0].quoted:
                yield from self._include(words, path, label, where)
                continue
            yield _Line(words, where)
        if pending:
            yield _Line(pending, Where(label, pending_at))

    def _include(self, words: list[Word], path: Path, label: str,
                 where: Where) -> Iterator[_Line]:
        if len(words) != 2:
            raise SourceError(where, "include takes one file name or pattern")
        pattern = words[1].text
        base = path.parent
        full = pattern if os.path.isabs(pattern) else str(base / pattern)
        if _GLOB_CHARS & set(pattern):
            matches = sorted(glob.glob(full))
        else:
            if not os.path.exists(full):
                raise SourceError(where, f"include {pattern}: no such file")
            matches = [full]
        for match in matches:
            target = Path(match)
            # Named as the including file is: relative to the working folder, or absolute.
            name = match if os.path.isabs(label) or os.path.isabs(pattern) \
                else os.path.relpath(match)
            yield from self.lines(target, name, where)

    def _split(self, raw: str, where: Where) -> tuple[list[Word], bool]:
        """The words of one line and whether it continues on the next (a final backslash)."""
        words: list[Word] = []
        i, n = 0, len(raw)
        current: list[str] = []
        while i < n:
            ch = raw[i]
            if ch in " \t\r\f\v":
                if current:
                    words.append(Word("".join(current)))
                    current = []
            elif ch in "!#" and not current:
                break
            elif ch == '"' and not current:
                end = raw.find('"', i + 1)
                if end < 0:
                    raise SourceError(where, "a quoted string is not closed on its line")
                words.append(Word(raw[i + 1:end], quoted=True))
                i = end
            elif ch in "{}":
                if current:
                    words.append(Word("".join(current)))
                    current = []
                words.append(Word(ch))
            else:
                current.append(ch)
            i += 1
        if current:
            words.append(Word("".join(current)))
        continued = bool(words) and not words[-1].quoted and words[-1].text == "\\"
        if continued:
            words.pop()
        self.words += len(words)
        if self.words > MAX_WORDS:
            raise SourceError(where, f"more than {MAX_WORDS} words")
        return words, continued


def parse_file(path: str | Path) -> list[Statement]:
    """The top-level statements of a keepalived.conf with its includes. Raises SourceError."""
    path = Path(path)
    reader = _Reader()
    root: list[Statement] = []
    stack: list[Statement] = []  # open blocks
    last: Statement | None = None  # a statement that may take a block on the next line
    for line in reader.lines(path, str(path), None):
        words: list[Word] = []
        for word in line.words:
            if word.quoted or word.text not in "{}":
                words.append(word)
                continue
            current = stack[-1].block if stack else root
            assert current is not None
            if word.text == "{":
                if words:
                    owner = Statement(words, line.where)
                    current.append(owner)
                elif last is not None and last.block is None:
                    owner = last
                else:
                    raise SourceError(line.where, "'{' opens a block with no keyword before it")
                owner.block, owner.block_where = [], line.where
                stack.append(owner)
                if len(stack) > MAX_NESTING:
                    raise SourceError(line.where, f"blocks nest deeper than {MAX_NESTING}")
            else:
                if words:
                    current.append(Statement(words, line.where))
                if not stack:
                    raise SourceError(line.where, "'}' closes no open block")
                stack.pop()
            words, last = [], None
        if words:
            current = stack[-1].block if stack else root
            assert current is not None
            statement = Statement(words, line.where)
            current.append(statement)
            last = statement
    if stack:
        open_at = stack[-1]
        raise SourceError(open_at.block_where or open_at.where,
                          f"the block of '{open_at.text}' is never closed (a '}}' is missing)")
    return root
