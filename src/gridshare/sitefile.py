"""Changing the site file of a running site: a charger added to a group, the operator's
comments and layout kept, checked exactly as ``gridshare check`` checks it, written with a
backup and atomically.

Why ruamel.yaml (round-trip) and not a textual insertion: a group's charger list may be a
block list, a flow list inside a flow mapping (``- {id: c1, max_current: 32, chargers: [a,
b]}``), or absent, and groups nest or name a ``parent:``; finding the right place in the
text by hand for each of those is where a careful insertion goes wrong. ruamel.yaml edits
the document tree and writes it back with the comments, key order, flow/block style and
quoting of everything it did not touch. It is slower than our libyaml reader (seconds for a
10,000-charger file), which is fine for an operator's occasional change; the result is read
back with our own reader anyway, so what runs is what ``check`` accepts.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError
from ruamel.yaml.util import load_yaml_guess_indent

from gridshare.config import DEFAULT_MAX_SIZE, SiteConfig, load_site_config, read_text

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
    was. Raise :class:`SiteFileError` for an unknown group or an id already there."""
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
