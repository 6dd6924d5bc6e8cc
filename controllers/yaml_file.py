"""Reading a performer's YAML file (a session config, an automation file) safely and with line numbers.

We compose the node tree (`yaml.SafeLoader`) rather than `safe_load` it because nodes keep their
lines: every error names the file and the line. Before any value is built, the tree is bounded:
the file's size, how deep it nests, and how many nodes it expands to through aliases. A 325-byte
"billion laughs" file (nested aliases) is refused in one line instead of growing to gigabytes, and
no message ever renders a value in full (errors.shown).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from musicsteer.engine.errors import MusicsteerError, TooLarge, one_line
from musicsteer.engine.files import existing_file
from musicsteer.engine.params import Param

MAX_BYTES = 1 << 20  # a config or automation file is text a person edits: a megabyte is plenty
MAX_NODES = 100_000  # nodes after alias expansion (an automation file of 10,000 events fits)
MAX_DEPTH = 32
# libyaml's loader where PyYAML was built with it: the same safe constructors, ~10x faster to compose.
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MERGE = "tag:yaml.org,2002:merge"


def read_text(path: str | Path, what: str) -> str:
    """The UTF-8 text of a user's file, or one line saying why not (missing, a folder, too big, binary)."""
    path = existing_file(path, what)
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise TooLarge(f"{what} {path} is {size} bytes; the most is {MAX_BYTES}")
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise MusicsteerError(f"{what} {path} is not UTF-8 text") from None
    except OSError as exc:
        raise MusicsteerError(f"cannot read {what} {path}: {one_line(exc.strerror or exc)}") from None


def yaml_error(exc: yaml.YAMLError, source: str) -> str:
    """One line for any YAML failure, with the line it happened on."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f"{source} line {mark.line + 1}" if mark else source
        kind = "YAML error" if isinstance(exc, yaml.constructor.ConstructorError) else "YAML syntax error"
        return f"{where}: {kind}: {one_line(exc.problem or exc.context or 'invalid YAML', 200)}"
    return f"{source}: YAML error: {one_line(exc, 200)}"


class YamlTree:
    """A bounded node tree of one YAML document; `value(node)` builds a node's Python value."""

    def __init__(self, text: str, source: str) -> None:
        self.source = source
        if len(text) > MAX_BYTES:
            raise TooLarge(f"{source} is {len(text)} characters long; the most is {MAX_BYTES}")
        self._loader = LOADER(text)
        try:
            self.root: yaml.Node | None = self._loader.get_single_node()
        except yaml.YAMLError as exc:
            raise MusicsteerError(yaml_error(exc, source)) from None
        except RecursionError:
            raise TooLarge(f"{source}: nested too deeply") from None
        finally:
            self._loader.dispose()
        if self.root is not None:
            _check_size(self.root, source)
            self._apply_merges(self.root)

    def _apply_merges(self, root: yaml.Node) -> None:
        """Apply YAML merge keys (`<<: *base`) in every mapping, once, before anything is built: a key
        written in the mapping overrides a merged one (two merged ones resolve as YAML says), and keys
        written twice stay twice, for the readers to refuse."""
        seen: set[int] = set()
        stack = [root]
        while stack:
            node = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if isinstance(node, yaml.MappingNode) and any(k.tag == MERGE for k, _ in node.value):
                own = [(k, v) for k, v in node.value if k.tag != MERGE]
                try:
                    self._loader.flatten_mapping(node)  # in place: the merged pairs first, later ones winning
                except yaml.YAMLError as exc:
                    raise MusicsteerError(yaml_error(exc, self.source)) from None
                written = {k.value for k, _ in own if isinstance(k, yaml.ScalarNode)}
                merged: dict[object, tuple[yaml.Node, yaml.Node]] = {}
                for k, v in node.value[: len(node.value) - len(own)]:
                    key = k.value if isinstance(k, yaml.ScalarNode) else id(k)
                    if key not in written:
                        merged.pop(key, None)
                        merged[key] = (k, v)
                node.value = [*merged.values(), *own]
            stack.extend(_children(node))

    def value(self, node: yaml.Node) -> Any:
        try:
            return self._loader.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            raise MusicsteerError(yaml_error(exc, self.source)) from None
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError, RecursionError) as exc:
            # an explicit tag on text it cannot read (`!!int abc`, `!!timestamp never`)
            raise self.fail(node, f"a value cannot be read: {one_line(exc, 80)}") from None

    def checked(self, row: Param, value: Any, node: yaml.Node) -> Any:
        """`value` (built from `node`'s subtree) read and checked by `row` with the start-up rules; an
        error names the row (pass `row.named(key)` to name a key as written) and `node`'s line."""
        try:
            return row.parse(value)
        except MusicsteerError as exc:
            raise self.fail(node, str(exc), type(exc)) from None

    def fail(self, node: yaml.Node, message: str, kind: type[MusicsteerError] = MusicsteerError) -> MusicsteerError:
        """An error about `node`, naming the file and its line."""
        return kind(f"{self.source} line {node.start_mark.line + 1}: {message}")


def _check_size(root: yaml.Node, source: str) -> None:
    """Count the nodes `root` expands to (aliases counted at every use), iteratively and memoised per
    node, refusing recursive aliases, deep nesting and expansions past MAX_NODES."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    open_nodes: set[int] = set()
    while stack:
        node, depth, children_done = stack.pop()
        key = id(node)
        if key in sizes and not children_done:
            continue
        if depth > MAX_DEPTH:
            raise TooLarge(f"{source} line {node.start_mark.line + 1}: nested more than {MAX_DEPTH} levels deep")
        children = _children(node)
        if not children_done:
            if key in open_nodes:
                raise MusicsteerError(f"{source} line {node.start_mark.line + 1}: a recursive alias")
            open_nodes.add(key)
            stack.append((node, depth, True))
            stack.extend((child, depth + 1, False) for child in children if id(child) not in sizes)
            continue
        open_nodes.discard(key)
        sizes[key] = 1 + sum(sizes[id(child)] for child in children)
        if sizes[key] > MAX_NODES:
            raise TooLarge(f"{source} line {node.start_mark.line + 1}: the file expands to more than {MAX_NODES} "
                           "values (aliases count at every use)")


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []
