"""Reading a performer's YAML file (a session config, an automation file) safely and with line numbers.

We compose the node tree (`yaml.SafeLoader`) rather than `safe_load` it because nodes keep their
lines: every error names the file and the line. Before any value is built, the tree is bounded:
the file's size, how deep it nests, and how many nodes it expands to through aliases. A 325-byte
"billion laughs" file (nested aliases) is refused in one line instead of growing to gigabytes, and
no message ever renders a value in full (errors.shown).

Numbers and booleans are read as written, by the rule the CLI reads a flag with (params.number_text):
YAML 1.1's other forms are not numbers here. `016` is sixteen (as in YAML 1.2 and on the command line,
not octal 14); `1_0`, `0x10`, `0o17`, `0b1` and `1:30` (1.1's base 60) stay the text they are, which a
number's row refuses in one line naming the line and a text row keeps as written; `1e3` is a number,
as on the command line; `.inf` and `.nan` are YAML's infinity and NaN, which every number's row refuses
as such. Only `true`/`false` are booleans (`yes`, `no`, `on`, `off` are words: YAML 1.2 core). A
mapping's keys are names, read as written (`016: 1` names `016`). `dump` writes by the same rules,
quoting whatever either reader would not read back as the same text, so a presets file reads back
exactly as it was saved.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from musicsteer.engine.errors import BadType, MusicsteerError, TooLarge, one_line, shown
from musicsteer.engine.files import existing_file
from musicsteer.engine.params import Param, number_text

MAX_BYTES = 1 << 20  # a config or automation file is text a person edits: a megabyte is plenty
MAX_NODES = 100_000  # nodes after alias expansion (an automation file of 10,000 events fits)
MAX_DEPTH = 32
MERGE = "tag:yaml.org,2002:merge"
INT, FLOAT, BOOL = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool"
# What may be a number as written: decimal digits, a point, an exponent (the CLI's float() reads the same).
WHOLE_FORM = re.compile(r"[-+]?[0-9]+\Z")
NUMBER_FORM = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?\Z")
NON_FINITE_FORM = re.compile(r"(?:[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))\Z")  # YAML's own: refused by rows as such
BOOL_FORM = re.compile(r"(?:true|True|TRUE|false|False|FALSE)\Z")


def _resolvers(base: dict) -> dict:
    """YAML 1.1's implicit resolvers without its numbers and booleans, and ours in their place."""
    ours = (INT, FLOAT, BOOL)
    out = {first: [(tag, form) for tag, form in pairs if tag not in ours] for first, pairs in base.items()}
    for tag, form, firsts in ((INT, WHOLE_FORM, "-+0123456789"), (FLOAT, NUMBER_FORM, "-+0123456789."),
                              (FLOAT, NON_FINITE_FORM, "-+."),
                              (BOOL, BOOL_FORM, "tTfF")):
        for first in firsts:
            out.setdefault(first, []).append((tag, form))
    return out


def _number(loader: yaml.BaseLoader, node: yaml.ScalarNode) -> Any:
    """A number by the CLI's rule. A number's form that the rule refuses (`1e999`: not finite) stays its text,
    for its row to refuse naming the line; any other text tagged `!!int`/`!!float` is an error."""
    text = loader.construct_scalar(node)
    if NON_FINITE_FORM.match(text):
        return float(text.replace(".", "").lower())  # inf, -inf, nan: every number's row says "must be finite"
    try:
        number = number_text("a number", text, node.tag == INT)
    except MusicsteerError as exc:
        if NUMBER_FORM.match(text):
            return text
        raise ValueError(str(exc)) from None
    if node.tag == INT and not isinstance(number, int):
        raise ValueError(f"!!int needs a whole number, got {text!r}")
    return number if node.tag == INT or isinstance(number, float) else float(number)


def _bool(loader: yaml.BaseLoader, node: yaml.ScalarNode) -> bool:
    text = loader.construct_scalar(node)
    if not BOOL_FORM.match(text):
        raise ValueError(f"!!bool needs true or false, got {text!r}")
    return text.lower() == "true"


# libyaml's loader where PyYAML was built with it: the same safe constructors, ~10x faster to compose.
class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    yaml_implicit_resolvers = _resolvers(yaml.SafeLoader.yaml_implicit_resolvers)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        """A mapping whose keys are names (a preset's, a vector's in a mix, a setting's): a scalar key is
        its text as written (`016: 1` names `016`, not 14 nor 16); merge keys are applied before."""
        self.flatten_mapping(node)
        out: dict = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise yaml.constructor.ConstructorError(None, None, "a key must be a name, not a list or mapping",
                                                        key_node.start_mark)
            out[key_node.value] = self.construct_object(value_node, deep=deep)
        return out


_Loader.add_constructor(INT, _number)
_Loader.add_constructor(FLOAT, _number)
_Loader.add_constructor(BOOL, _bool)
LOADER = _Loader


class _Dumper(yaml.SafeDumper):
    """Quotes a string that this reader or a YAML 1.1 one would read as anything else (`016`, `1e3`, `yes`)."""

    yaml_implicit_resolvers = {first: [*yaml.SafeDumper.yaml_implicit_resolvers.get(first, []), *ours]
                               for first, ours in _resolvers(yaml.SafeDumper.yaml_implicit_resolvers).items()}


def _text(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    # YAML folds a line break inside plain or single-quoted text to a space, and 1.1 counts NEL, LS and PS
    # as line breaks: such text goes in double quotes, where they are escaped (\N, \L, \P).
    style = '"' if any(ch in "\x85\u2028\u2029" for ch in text) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _text)


def dump(data: Any, flow: bool = False) -> str:
    """`data` as YAML that `YamlTree` (and a YAML 1.1 reader) reads back as the same values: every string
    that could be read as a number, boolean or null is quoted; text is UTF-8 (allow_unicode), and what
    cannot stand plain (U+2028, U+0085, a BOM) is escaped in double quotes. Block style, or with `flow`
    one line per collection (`{cc: 16, param: alpha}`)."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=flow,
                     width=10**6 if flow else 80)


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

    def checked(self, row: Param, value: Any, node: yaml.Node, source: yaml.Node | None = None) -> Any:
        """`value` (built from `source`, the value's node) read and checked by `row` with the start-up rules;
        an error names the row (pass `row.named(key)` to name a key as written) and `node`'s line. Where a
        text row is given a number or a boolean, the refusal shows it as written (`prompt: 016`)."""
        if row.kind == "text" and isinstance(source, yaml.ScalarNode) and value is not None \
                and not isinstance(value, str):
            raise self.fail(node, f"{row.name} needs text, got {type(value).__name__} {shown(source.value)} "
                                  "(put text that reads as a number in quotes)", BadType)
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
