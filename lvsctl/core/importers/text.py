"""A cluster file as commented YAML text: a small tree of mappings and lists, rendered by hand.

PyYAML drops comments, and an import's comments (where each value came from) are its point, so
the text is built here; ``plain()`` gives the same tree as data, which the text must load back to.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Union

import yaml

_PLAIN = re.compile(r"[A-Za-z0-9_./][A-Za-z0-9_./+@-]*")
PLACEHOLDER = "<REPLACE ME>"  # refused by every field it stands in (address, name, interface)


@dataclass(frozen=True)
class Placeholder:
    """A value lvsctl needs and the source lacks: ``<REPLACE ME>`` in the file, ``example``
    where the import validates the rest of the file."""

    what: str
    example: object


Scalar = str | int | float | bool | Placeholder
Value = Union[Scalar, "Map", "Seq"]


@dataclass
class Entry:
    key: str
    value: Value
    comment: str = ""


@dataclass
class Map:
    """A YAML mapping whose keys keep their order and their end-of-line comments."""

    entries: list[Entry] = field(default_factory=list)
    comment: str = ""  # on the line that opens the mapping (a list item's first line)
    flow: bool = False  # {a: 1, b: 2} on one line (small, comment-free mappings)

    def add(self, key: str, value: Value, comment: str = "") -> Map:
        """Set ``key``; a key given again keeps its place and takes the new value (as
        keepalived, where the last of a repeated keyword counts)."""
        for i, entry in enumerate(self.entries):
            if entry.key == key:
                self.entries[i] = Entry(key, value, comment)
                return self
        self.entries.append(Entry(key, value, comment))
        return self

    def get(self, key: str) -> Value | None:
        for entry in self.entries:
            if entry.key == key:
                return entry.value
        return None

    def remove(self, key: str) -> None:
        self.entries = [e for e in self.entries if e.key != key]


@dataclass
class Seq:
    """A YAML list: items, plus comment-only lines (e.g. an entry that was left out)."""

    items: list[Value | Commented] = field(default_factory=list)


@dataclass(frozen=True)
class Commented:
    """Lines shown as comments in a list (something the import could not carry over)."""

    lines: tuple[str, ...]


def scalar_text(value: Scalar, fill: bool) -> str:
    if isinstance(value, Placeholder):
        if not fill:
            return json.dumps(PLACEHOLDER)
        value = value.example  # type: ignore[assignment]
        if isinstance(value, Map | Seq):
            raise TypeError("a placeholder example is a scalar")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    # Plain only for simple words that read back as the same string, in block and flow
    # context alike (so no ':', ',', brackets or '#'); anything else is a JSON string,
    # which YAML reads as a double-quoted scalar.
    plain = bool(_PLAIN.fullmatch(text)) and yaml.safe_load(text) == text
    return text if plain else json.dumps(text)


def _flow(value: Value, fill: bool) -> str:
    if isinstance(value, Map):
        inner = ", ".join(f"{e.key}: {_flow(e.value, fill)}" for e in value.entries)
        return "{" + inner + "}"
    if isinstance(value, Seq):
        return "[" + ", ".join(_flow(v, fill) for v in value.items
                               if not isinstance(v, Commented)) + "]"
    return scalar_text(value, fill)


def _is_flow_seq(seq: Seq) -> bool:
    """Scalars only: [a, b] on one line; a list of mappings gets a line per item."""
    return all(not isinstance(v, Map | Seq | Commented) for v in seq.items)


def _note(comment: str) -> str:
    return f"  # {comment}" if comment else ""


def render_map(node: Map, indent: int, fill: bool, first_prefix: str | None = None) -> list[str]:
    """Block lines for ``node``; ``first_prefix`` replaces the first line's indent ("- ")."""
    lines: list[str] = []
    pad = " " * indent
    for i, entry in enumerate(node.entries):
        lead = first_prefix if (i == 0 and first_prefix is not None) else pad
        tail = _note(entry.comment or (node.comment if i == 0 else ""))
        if i == 0 and entry.comment and node.comment:
            tail = _note(f"{node.comment}; {entry.comment}")
        value = entry.value
        if isinstance(value, Map) and not value.flow:
            if not value.entries:
                lines.append(f"{lead}{entry.key}: {{}}{tail}")
            else:
                lines.append(f"{lead}{entry.key}:{tail}")
                lines.extend(render_map(value, indent + 2, fill))
        elif isinstance(value, Seq) and not _is_flow_seq(value):
            lines.append(f"{lead}{entry.key}:{tail}")
            lines.extend(render_seq(value, indent + 2, fill))
        else:
            lines.append(f"{lead}{entry.key}: {_flow(value, fill)}{tail}")
    return lines


def render_seq(seq: Seq, indent: int, fill: bool) -> list[str]:
    lines: list[str] = []
    pad = " " * indent
    for item in seq.items:
        if isinstance(item, Commented):
            lines.extend(f"{pad}# {line}" for line in item.lines)
        elif isinstance(item, Map) and not item.flow:
            lines.extend(render_map(item, indent + 2, fill, first_prefix=f"{pad}- "))
        else:
            comment = item.comment if isinstance(item, Map) else ""
            lines.append(f"{pad}- {_flow(item, fill)}{_note(comment)}")
    return lines


def render(doc: Map, header: list[str], fill: bool = False) -> str:
    """The document as YAML text: ``header`` as comment lines, a blank line between top keys.

    ``fill`` writes each placeholder's example value instead of ``<REPLACE ME>``.
    """
    lines = [f"# {line}" if line else "#" for line in header]
    for entry in doc.entries:
        lines.append("")
        lines.extend(render_map(Map([entry]), 0, fill))
    return "\n".join(lines) + "\n"


def plain(value: Value, fill: bool = False) -> object:
    """The tree as data (what the rendered text must load back to)."""
    if isinstance(value, Map):
        return {e.key: plain(e.value, fill) for e in value.entries}
    if isinstance(value, Seq):
        return [plain(v, fill) for v in value.items if not isinstance(v, Commented)]
    if isinstance(value, Placeholder):
        return value.example if fill else PLACEHOLDER
    return value


def placeholders(value: Value) -> list[Placeholder]:
    """Every placeholder in the tree, in document order."""
    if isinstance(value, Map):
        return [p for e in value.entries for p in placeholders(e.value)]
    if isinstance(value, Seq):
        return [p for v in value.items if not isinstance(v, Commented) for p in placeholders(v)]
    return [value] if isinstance(value, Placeholder) else []
