"""YAML in and out, with the line numbers PyYAML normally throws away.

Reading: :func:`read_document` parses one YAML (or JSON) document with PyYAML's *safe* loader and
also records, for every path into the data, the 1-based line where it starts. A mapping entry is
located at its key (``servers[0].bogus`` points at the line of ``bogus:``), a list item at its
first token. Repeated keys in one mapping, which YAML silently resolves to the last value, are
recorded too so that the loader can report them.

Writing: :func:`dump_yaml` renders plain data (dicts, lists, scalars) as block-style YAML that keeps
the dict order and indents lists under their key.

Example::

    >>> doc = read_document("listen:\\n  port: 8190\\nservers: []\\n")
    >>> doc.data
    {'listen': {'port': 8190}, 'servers': []}
    >>> doc.line_of(("listen", "port")), doc.line_of(("servers", 0, "url"))
    (2, 3)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

DataPath = tuple[str | int, ...]
"""A path into loaded data, as pydantic spells error locations: ``("servers", 1, "url")``."""

_MERGE_TAG = "tag:yaml.org,2002:merge"
_MAX_NODES = 100_000  # bounds the line walk over alias-expanded ("billion laughs") documents


class YamlSyntaxError(ValueError):
    """The text is not one well-formed YAML document; ``line`` is 1-based when known."""

    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


@dataclass(frozen=True)
class YamlDocument:
    """Loaded data plus where each part of it was written."""

    data: Any
    lines: Mapping[DataPath, int] = field(default_factory=dict)
    duplicate_keys: tuple[tuple[DataPath, int], ...] = ()
    """``(path, line)`` of every key that repeats an earlier key of the same mapping."""

    def line_of(self, path: DataPath) -> int | None:
        """Return the line of ``path``, else of its nearest located ancestor (None if unknown)."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return None


def read_document(text: str) -> YamlDocument:
    """Parse one YAML document (JSON accepted) and locate its parts; raise YamlSyntaxError.

    An empty document (or one with only comments) yields ``data=None``.
    """
    try:
        return _read_yaml(text)
    except YamlSyntaxError:
        if text.lstrip().startswith(("{", "[")):
            try:  # JSON is YAML, except that it may be indented with tabs, which YAML refuses
                return YamlDocument(data=json.loads(text))
            except ValueError:
                pass
        raise


def _read_yaml(text: str) -> YamlDocument:
    try:
        # The constructor already scans the text for characters YAML does not allow.
        loader = yaml.SafeLoader(text)
    except yaml.reader.ReaderError as exc:
        raise _reader_error(text, exc) from None
    walker = _LineWalker()
    try:
        node = loader.get_single_node()
        if node is None:
            return YamlDocument(data=None)
        walker.walk(node, ())  # before construction, which flattens merge keys in place
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        raise YamlSyntaxError(_describe(exc), _line(exc)) from None
    except yaml.reader.ReaderError as exc:
        raise _reader_error(text, exc) from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(str(exc), None) from None
    finally:
        loader.dispose()
    return YamlDocument(data, walker.lines, tuple(walker.duplicates))


def _reader_error(text: str, exc: yaml.reader.ReaderError) -> YamlSyntaxError:
    """Locate a character YAML refuses (control characters, U+FFFE...) by line."""
    position = exc.position if isinstance(exc.position, int) else 0
    line = text.count("\n", 0, position) + 1
    character = exc.character
    code = ord(character) if isinstance(character, str) else character
    shown = f"U+{code:04X}" if isinstance(code, int) else repr(character)
    return YamlSyntaxError(f"character {shown} is not allowed in YAML ({exc.reason})", line)


def _describe(exc: yaml.MarkedYAMLError) -> str:
    parts = [p for p in (exc.context, exc.problem) if p]
    return ", ".join(parts) if parts else "invalid YAML"


def _line(exc: yaml.MarkedYAMLError) -> int | None:
    mark = exc.problem_mark or exc.context_mark
    return mark.line + 1 if mark is not None else None


class _LineWalker:
    """Record the start line of every path of a composed node tree."""

    def __init__(self) -> None:
        self.lines: dict[DataPath, int] = {}
        self.duplicates: list[tuple[DataPath, int]] = []
        self._budget = _MAX_NODES
        self._stack: set[int] = set()

    def walk(self, node: Node, path: DataPath) -> None:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if self._budget <= 0 or id(node) in self._stack:  # recursive alias or too large
            return
        self._budget -= 1
        self._stack.add(id(node))
        try:
            if isinstance(node, MappingNode):
                self._walk_mapping(node, path)
            elif isinstance(node, SequenceNode):
                for index, item in enumerate(node.value):
                    self.walk(item, (*path, index))
        finally:
            self._stack.discard(id(node))

    def _walk_mapping(self, node: MappingNode, path: DataPath) -> None:
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE_TAG:
                continue  # merged-in keys are located at their parent
            key = str(key_node.value)
            child = (*path, key)
            line = key_node.start_mark.line + 1
            if key in seen:  # YAML keeps the later value: locate that one
                self.duplicates.append((child, line))
                for stale in [p for p in self.lines if p[: len(child)] == child]:
                    del self.lines[stale]
            seen.add(key)
            self.lines[child] = line
            self.walk(value_node, child)


class _BlockDumper(yaml.SafeDumper):
    """Block style, lists indented under their key, no anchors/aliases."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)

    def ignore_aliases(self, data: Any) -> bool:
        return True


_LINE_BREAKS = ("\x85", "\u2028", "\u2029")


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # YAML reads NEL and the Unicode line/paragraph separators as line breaks (folding them to
    # a space) unless they are escaped, which only the double-quoted style does.
    if any(ch in value for ch in _LINE_BREAKS):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style='"')
    return dumper.represent_str(value)


_BlockDumper.add_representer(str, _represent_str)


def dump_yaml(data: Any) -> str:
    """Render plain data as block-style YAML, keeping mapping order."""
    return yaml.dump(
        data,
        Dumper=_BlockDumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=100,
    )
