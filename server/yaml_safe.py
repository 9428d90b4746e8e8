"""YAML for files the server reads from places others can write (model config.yaml, server.yaml, tokens).

`load_bytes` refuses, before a single Python object is built:
- files above `max_bytes` (checked on the raw bytes, before parsing);
- anchors and aliases (`&a`, `*a`, and so the `<<` merge key): an alias bomb of a few hundred bytes
  expands to gigabytes once anything walks or prints the result, and config files never need them;
- more than `max_nodes` nodes or nesting deeper than `max_depth`.
With libyaml present the check walks the C parser's event stream and the C loader builds the result,
so a legitimate file costs about what `yaml.safe_load` does; without it the pure-Python
`NoAliasSafeLoader` refuses the same things in `compose_node`.

Errors are `YamlRefused` with a message that names the file, the line and the rule, bounded in length,
and never quotes a value. `brief(value)` is the one way other messages should show a configured value.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

MAX_CONFIG_BYTES = 256 * 1024  # config.yaml written by `cnn export` is < 1 KiB; comments leave room to spare
MAX_NODES = 20_000  # scalars + collections
MAX_DEPTH = 32
MAX_MESSAGE_CHARS = 400  # any message this module builds
BRIEF_CHARS = 60

_CLoader = getattr(yaml, "CSafeLoader", None)


class YamlRefused(ValueError):
    """The file is too large, not valid YAML, or uses a construct config files may not use."""


def brief(value: Any, limit: int = BRIEF_CHARS) -> str:
    """repr(value) cut to `limit` characters: safe to put in any message, whatever a file held.

    Containers are described by type and length rather than walked, so a huge (or shared, alias-built)
    structure costs nothing to describe."""
    if (
        isinstance(value, (list, tuple, set))
        and len(value) <= 8
        and all(
            isinstance(x, (int, float, bool, type(None))) or (isinstance(x, str) and len(x) <= limit) for x in value
        )
    ):
        text = repr(value)  # a short flat list: shown as it is
        return text if len(text) <= 2 * limit else text[: 2 * limit] + "..."
    if isinstance(value, (list, tuple, dict, set)):
        return f"a {type(value).__name__} of {len(value)} entries"
    if isinstance(value, (str, bytes)) and len(value) > limit:
        return repr(value[:limit]) + f"... ({len(value)} chars)"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _cap(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE_CHARS else message[: MAX_MESSAGE_CHARS - 3] + "..."


def _where(where: str, mark) -> str:
    return f"{where}, line {mark.line + 1}" if mark is not None else where


class _Guard:
    """Counts nodes and depth over an event stream; refuses anchors and aliases."""

    def __init__(self, where: str, max_nodes: int, max_depth: int) -> None:
        self.where, self.max_nodes, self.max_depth = where, max_nodes, max_depth
        self.nodes = self.depth = 0

    def see(self, event) -> None:
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise YamlRefused(
                _cap(
                    f"{_where(self.where, event.start_mark)}: YAML anchors and aliases (&name, *name, "
                    "<<) are not allowed in this file; write the values out"
                )
            )
        if isinstance(event, (yaml.ScalarEvent, yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            self.nodes += 1
            if self.nodes > self.max_nodes:
                raise YamlRefused(
                    _cap(f"{_where(self.where, event.start_mark)}: more than {self.max_nodes} YAML nodes")
                )
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            self.depth += 1
            if self.depth > self.max_depth:
                raise YamlRefused(
                    _cap(f"{_where(self.where, event.start_mark)}: nested deeper than {self.max_depth} levels")
                )
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            self.depth -= 1


class NoAliasSafeLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses anchors and aliases (and bounds nodes and depth) while composing,
    before the node graph, let alone Python objects, is built. The fallback when libyaml is absent."""

    guard: _Guard

    def compose_node(self, parent, index):
        self.guard.see(self.peek_event())
        return super().compose_node(parent, index)

    def compose_sequence_node(self, anchor):
        node = super().compose_sequence_node(anchor)
        self.guard.depth -= 1
        return node

    def compose_mapping_node(self, anchor):
        node = super().compose_mapping_node(anchor)
        self.guard.depth -= 1
        return node


def _yaml_error(where: str, e: yaml.YAMLError) -> YamlRefused:
    """A parser error in our words: line and column and the problem, without the file's text (pyyaml's own
    message quotes the offending line, which may be a megabyte long)."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or type(e).__name__
    at = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return YamlRefused(_cap(f"{where}{at}: not valid YAML: {str(problem)[:120]}"))


def load_bytes(
    data: bytes,
    where: str,
    *,
    max_bytes: int = MAX_CONFIG_BYTES,
    max_nodes: int = MAX_NODES,
    max_depth: int = MAX_DEPTH,
) -> Any:
    """Parse one YAML document from `data` under the rules above; None for an empty document."""
    if len(data) > max_bytes:
        raise YamlRefused(_cap(f"{where}: {len(data):,} bytes; the limit for this file is {max_bytes:,} bytes"))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise YamlRefused(_cap(f"{where}: not UTF-8 text (byte {e.start})")) from None
    guard = _Guard(where, max_nodes, max_depth)
    try:
        if _CLoader is not None:
            for event in yaml.parse(text, Loader=_CLoader):
                guard.see(event)
            return yaml.load(text, Loader=_CLoader)
        loader = NoAliasSafeLoader(text)
        loader.guard = guard
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        raise _yaml_error(where, e) from None
    except RecursionError:
        raise YamlRefused(_cap(f"{where}: nested too deeply")) from None


def load_file(path: str | os.PathLike, *, max_bytes: int = MAX_CONFIG_BYTES, **kw: int) -> Any:
    """Read at most max_bytes + 1 bytes of `path` (a growing or huge file is never read whole) and parse
    them with `load_bytes`. OSError propagates to the caller, which knows how to word it."""
    p = Path(path)
    with open(p, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise YamlRefused(_cap(f"{p}: larger than the limit of {max_bytes:,} bytes for this file"))
    return load_bytes(data, str(p), max_bytes=max_bytes, **kw)
