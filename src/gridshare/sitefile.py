"""Changing the site file of a running site: a charger added to a group, the operator's
comments and layout kept, checked exactly as ``gridshare check`` checks it, written with a
backup and atomically.

How the text is changed, and why two ways:

1. A careful textual insertion first. libyaml (C) composes the file with the position of
   every node; the new id goes into the group's ``chargers:`` list (before the ``]`` of a
   flow list, as one more ``- id`` line of a block list, or as a new ``chargers: [id]``),
   the new entry after the last one of the top-level ``chargers:``, written the way the
   entries before it are (``- {id: ..}`` or a block mapping at their indentation).
   Nothing else in the file changes, not even a space, and it is fast: 3.0 s for the
   10,000-charger demo site (0.9 MB), proof included, where ruamel.yaml's round trip
   takes 15 s (0.17 s against 1.3 s at 1,000 chargers; measured on the development
   machine with ``demo_site_text``).
2. Every inserted text is proven: the new file, read back, must be exactly the old
   document with the id and the entry appended. A shape the insertion does not know
   (anchors, a group list written some other way) or a proof that fails falls back to
   ruamel.yaml's round-trip mode, which edits the document tree and writes it back with
   the comments, key order, indentation, flow/block style and quoting of everything it
   did not touch (only the spacing before a comment on an edited line may change).

Either way the result is then read back with the validation of ``gridshare check``
(:func:`prepare`), so what runs is what ``check`` accepts.
"""

from __future__ import annotations

import copy
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml as pyyaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError
from ruamel.yaml.util import load_yaml_guess_indent

from gridshare.config import DEFAULT_MAX_SIZE, SiteConfig, load_site_config, read_text

_Loader: type[pyyaml.SafeLoader] = getattr(pyyaml, "CSafeLoader", pyyaml.SafeLoader)
"""libyaml's loader (positions in characters) when PyYAML has it, as config.py reads."""

PACKAGE_DIR = Path(__file__).resolve().parent
"""The installed gridshare package: its example site files are never written."""


class SiteFileError(Exception):
    """The site file cannot be changed; ``kind`` says why (for the API's status code)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        """``unknown-group``, ``already-declared``, ``not-writable``, ``unreadable``."""


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap the operator's long lines
    return yaml


def _groups(entries: Any) -> Iterator[CommentedMap]:
    """Every group mapping of a ``groups:`` list, nested ones too."""
    if not isinstance(entries, list):
        return
    for entry in entries:
        if isinstance(entry, dict):
            yield entry  # type: ignore[misc]
            yield from _groups(entry.get("groups"))


def _flow_map(value: dict[str, Any]) -> CommentedMap:
    out = CommentedMap(value)
    out.fa.set_flow_style()
    return out


def _flow(seq: Any) -> bool:
    """Whether the entries of ``seq`` are written in flow style (``- {id: a, ...}``)."""
    if not isinstance(seq, CommentedSeq) or not seq:
        return False
    first = seq[0]
    return isinstance(first, CommentedMap) and bool(first.fa.flow_style())


def with_charger(text: str, charger: dict[str, Any], group: str) -> str:
    """``text`` with ``charger`` (a spec as the site file writes one, ``id`` first) added
    to the top-level ``chargers:`` and its id to ``group``'s ``chargers:``; the rest as it
    was (see the module docstring). Raise :class:`SiteFileError` for an unknown group or
    an id already there."""
    try:
        data = pyyaml.load(text, Loader=_Loader)
    except pyyaml.YAMLError as exc:
        raise SiteFileError("unreadable", f"the site file is not valid YAML: {exc}") from exc
    expected = _expected(data, charger, group)
    try:
        inserted = _inserted(text, charger, group)
    except _Unsupported:
        inserted = None
    if inserted is not None and pyyaml.load(inserted, Loader=_Loader) == expected:
        return inserted
    return _round_trip(text, charger, group)


def _expected(data: Any, charger: dict[str, Any], group: str) -> dict[str, Any]:
    """The document ``data`` with the charger added, as the new file must read."""
    if not isinstance(data, dict):
        raise SiteFileError("unreadable", "the site file is not a mapping")
    out = copy.deepcopy(data)
    cid = charger["id"]
    chargers = out.setdefault("chargers", [])
    if chargers is None:
        chargers = out["chargers"] = []
    if not isinstance(chargers, list):
        raise SiteFileError("unreadable", "the site file's chargers: is not a list")
    if any(isinstance(c, dict) and c.get("id") == cid for c in chargers):
        raise SiteFileError("already-declared", f"charger {cid!r} is already declared")
    target = next((g for g in _groups(out.get("groups")) if g.get("id") == group), None)
    if target is None:
        raise SiteFileError("unknown-group", f"unknown group {group!r}")
    ids = target.setdefault("chargers", [])
    if not isinstance(ids, list):
        raise SiteFileError("unreadable", f"group {group}'s chargers: is not a list")
    ids.append(cid)
    chargers.append(copy.deepcopy(charger))
    return out


class _Unsupported(Exception):
    """A layout the textual insertion does not handle (ruamel.yaml does it instead)."""


def _flow_text(value: Any) -> str:
    """``value`` as one line of flow YAML, as PyYAML quotes it."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_flow_text(k)}: {_flow_text(v)}" for k, v in value.items()) \
            + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_flow_text(v) for v in value) + "]"
    out = pyyaml.safe_dump(value, default_flow_style=True, width=1 << 30).strip()
    return out.removesuffix("...").strip()


def _key(node: pyyaml.Node) -> str | None:
    return node.value if isinstance(node, pyyaml.ScalarNode) else None


def _entries(node: pyyaml.Node) -> dict[str, pyyaml.Node]:
    if not isinstance(node, pyyaml.MappingNode):
        raise _Unsupported("not a mapping")
    return {key: v for k, v in node.value if (key := _key(k)) is not None}


def _group_node(seq: pyyaml.Node | None, group: str) -> pyyaml.MappingNode | None:
    if not isinstance(seq, pyyaml.SequenceNode):
        return None
    for item in seq.value:
        if not isinstance(item, pyyaml.MappingNode):
            continue
        entries = _entries(item)
        found = entries.get("id")
        if isinstance(found, pyyaml.ScalarNode) and found.value == group:
            return item
        deeper = _group_node(entries.get("groups"), group)
        if deeper is not None:
            return deeper
    return None


def _last_end(node: pyyaml.Node) -> int:
    """Where the last text of ``node`` ends (a block collection's own end mark lies past
    the comments after it)."""
    if isinstance(node, pyyaml.MappingNode | pyyaml.SequenceNode) and not node.flow_style:
        if not node.value:
            raise _Unsupported("empty block collection")
        last = node.value[-1]
        return _last_end(last[1] if isinstance(node, pyyaml.MappingNode) else last)
    index: int = node.end_mark.index
    return index


def _line_end(text: str, index: int) -> int:
    end = text.find("\n", index)
    return len(text) if end < 0 else end


def _item_prefix(text: str, item: pyyaml.Node) -> str:
    """What comes before a block sequence item on its line: its indentation and ``- ``."""
    start: int = item.start_mark.index
    line_start = text.rfind("\n", 0, start) + 1
    prefix = text[line_start:start]
    if prefix.strip() != "-":
        raise _Unsupported("item not on a line of its own")
    return prefix


def _closing(text: str, node: pyyaml.Node, bracket: str) -> int:
    """Where the closing ``]`` or ``}`` of a flow collection is."""
    at: int = node.end_mark.index - 1
    if text[at:at + 1] != bracket:
        raise _Unsupported("flow collection does not end with its bracket")
    return at


def _inserted(text: str, charger: dict[str, Any], group: str) -> str | None:
    """``text`` with the charger inserted where it belongs (see the module docstring), or
    None when the layout is not one this handles."""
    root = pyyaml.compose(text, Loader=_Loader)
    if root is None:
        return None
    top = _entries(root)
    target = _group_node(top.get("groups"), group)
    if target is None:
        return None
    cid = _flow_text(charger["id"])
    edits: list[tuple[int, str]] = []
    group_entries = _entries(target)
    ids = group_entries.get("chargers")
    if isinstance(ids, pyyaml.SequenceNode) and ids.flow_style:
        edits.append((_closing(text, ids, "]"), (", " if ids.value else "") + cid))
    elif isinstance(ids, pyyaml.SequenceNode) and ids.value:
        last = ids.value[-1]
        edits.append((_line_end(text, _last_end(last)), "\n" + _item_prefix(text, ids.value[0])
                      + cid))
    elif ids is None and target.flow_style:
        edits.append((_closing(text, target, "}"), f", chargers: [{cid}]"))
    elif ids is None:
        first_key, first_value = target.value[0]
        if not isinstance(first_value, pyyaml.ScalarNode):
            return None
        indent = " " * first_key.start_mark.column
        edits.append((_line_end(text, first_value.end_mark.index),
                      f"\n{indent}chargers: [{cid}]"))
    else:
        return None
    entry = _flow_text(charger)
    chargers = top.get("chargers")
    if chargers is None and "chargers" not in top:
        tail = "" if text.endswith("\n") else "\n"
        edits.append((len(text), f"{tail}chargers:\n  - {entry}\n"))
    elif isinstance(chargers, pyyaml.SequenceNode) and chargers.flow_style:
        edits.append((_closing(text, chargers, "]"), (", " if chargers.value else "") + entry))
    elif isinstance(chargers, pyyaml.SequenceNode) and chargers.value:
        first, last = chargers.value[0], chargers.value[-1]
        prefix = _item_prefix(text, first)
        if isinstance(first, pyyaml.MappingNode) and not first.flow_style:
            indent = "\n" + " " * len(prefix)
            entry = indent.join(f"{_flow_text(k)}: {_flow_text(v)}" for k, v in charger.items())
        edits.append((_line_end(text, _last_end(last)), "\n" + prefix + entry))
    else:
        return None
    out = text
    for at, insert in sorted(edits, reverse=True):
        out = out[:at] + insert + out[at:]
    return out


def _round_trip(text: str, charger: dict[str, Any], group: str) -> str:
    """The same change made with ruamel.yaml's round-trip mode (any layout)."""
    yaml = _yaml()
    try:
        _, indent, offset = load_yaml_guess_indent(text)
        if indent is not None:  # the operator's indentation, not ruamel's default
            offset = offset or 0
            yaml.indent(mapping=max(indent - offset, 2), sequence=indent, offset=offset)
        data = yaml.load(text)
    except YAMLError as exc:
        raise SiteFileError("unreadable", f"the site file is not valid YAML: {exc}") from exc
    if not isinstance(data, CommentedMap):
        raise SiteFileError("unreadable", "the site file is not a mapping")
    cid = charger["id"]
    chargers = data.get("chargers")
    if chargers is None:
        chargers = data["chargers"] = CommentedSeq()
    if not isinstance(chargers, list):
        raise SiteFileError("unreadable", "the site file's chargers: is not a list")
    if any(isinstance(c, dict) and c.get("id") == cid for c in chargers):
        raise SiteFileError("already-declared", f"charger {cid!r} is already declared")
    target = next((g for g in _groups(data.get("groups")) if g.get("id") == group), None)
    if target is None:
        raise SiteFileError("unknown-group", f"unknown group {group!r}")
    ids = target.get("chargers")
    if ids is None:
        ids = CommentedSeq()
        ids.fa.set_flow_style()
        target["chargers"] = ids
    if not isinstance(ids, list):
        raise SiteFileError("unreadable", f"group {group}'s chargers: is not a list")
    ids.append(cid)
    entry = CommentedMap(charger)
    if _flow(chargers):
        entry.fa.set_flow_style()
    for key in list(entry):
        value = entry[key]
        if isinstance(value, list):  # connectors: one line, each a {mapping}
            seq = CommentedSeq(_flow_map(v) if isinstance(v, dict) else v for v in value)
            seq.fa.set_flow_style()
            entry[key] = seq
    chargers.append(entry)
    out = io.StringIO()
    yaml.dump(data, out)
    return out.getvalue()


def writable_reason(path: Path | None) -> str | None:
    """Why the running site file cannot be changed in place, or None when it can."""
    if path is None:
        return "this site was not started from a site file (gridshare demo or an embedded " \
               "example): there is no file to add the charger to"
    if not path.is_file():
        return f"the site file {path} is gone"
    folder = path.resolve().parent
    if folder.is_relative_to(PACKAGE_DIR):
        return f"the site file {path} is an example shipped inside gridshare: copy it " \
               "somewhere of your own and serve that copy to add chargers to it"
    if not os.access(path, os.W_OK) or not os.access(folder, os.W_OK):
        return f"the site file {path} (or its folder, for the backup and the atomic " \
               "rename) is not writable by gridshare"
    return None


def prepare(path: Path, charger: dict[str, Any], group: str,
            max_size: int = DEFAULT_MAX_SIZE) -> tuple[Path, SiteConfig]:
    """The new site file, written next to ``path`` under a temporary name and read back
    with the one-pass validation of ``gridshare check`` (``ConfigError`` when it finds a
    problem, the temporary file removed). Returns the temporary file and its config; the
    caller either :func:`commit`\\ s it or removes it."""
    reason = writable_reason(path)
    if reason is not None:
        raise SiteFileError("not-writable", reason)
    text = read_text(path, max_size)
    new_text = with_charger(text, charger, group)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".new", dir=path.parent)
    temp = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(new_text)
            out.flush()
            os.fsync(out.fileno())
        shutil.copymode(path, temp)
        config = load_site_config(temp, max_size)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp, config


def commit(path: Path, temp: Path, now: datetime) -> Path:
    """Keep a copy of ``path`` as ``<name>.bak-<UTC time>``, then put ``temp`` in its place
    atomically (rename, then the folder fsync'd so the rename survives a power cut).
    Returns the backup."""
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    backup = path.with_name(f"{path.name}.bak-{stamp}")
    shutil.copy2(path, backup)
    os.replace(temp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
    return backup
