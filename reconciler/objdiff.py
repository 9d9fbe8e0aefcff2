"""What a write would change, as `kubectl diff` shows it: a unified diff of the object's YAML as
it is (LIVE) and as it would be after the write (MERGED), one file per object, named
`group.version.Kind.namespace.name`. A create diffs from nothing, a delete to nothing; a patch is
applied to the object as listed (RFC 6902 JSON patch or RFC 7386 merge patch), so the diff shows
exactly the fields the patch changes. Pure: no I/O.

The MERGED side is what we would send, not a server-side dry run: defaults the API server would
add, and the uid, resourceVersion and timestamps a create gets, are not shown."""

from __future__ import annotations

import copy
import difflib
from collections.abc import Sequence
from typing import Any

import yaml

from .kube import JSON_PATCH, MERGE_PATCH

Obj = dict[str, Any]


class PatchError(Exception):
    """The patch does not apply to the object as listed (a path that is not there, a failed
    `test`): the server would refuse it."""


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"{path!r} is not a JSON pointer")
    return [_unescape(token) for token in path[1:].split("/")]


def _index(container: list[Any], token: str, *, for_add: bool) -> int:
    if for_add and token == "-":
        return len(container)
    if not token.isdigit() or (len(token) > 1 and token.startswith("0")):
        raise PatchError(f"{token!r} is not an array index")
    index = int(token)
    if index > len(container) or (index == len(container) and not for_add):
        raise PatchError(f"index {index} is out of range")
    return index


def _parent(document: Any, tokens: list[str], path: str) -> Any:
    node = document
    for token in tokens[:-1]:
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token, for_add=False)]
        else:
            raise PatchError(f"{path}: no such path")
    return node


def apply_json_patch(document: Any, operations: Sequence[Obj]) -> Any:
    """RFC 6902 `add`, `remove`, `replace` and `test` (what this project sends), on a copy."""
    result = copy.deepcopy(document)
    for operation in operations:
        op, path = operation.get("op"), str(operation.get("path", ""))
        tokens = _pointer(path)
        if not tokens:
            if op in ("add", "replace"):
                result = copy.deepcopy(operation.get("value"))
                continue
            if op == "test":
                if result != operation.get("value"):
                    raise PatchError(f"test failed at {path!r}")
                continue
            raise PatchError(f"cannot {op} the whole document")
        parent, last = _parent(result, tokens, path), tokens[-1]
        if op == "test":
            if isinstance(parent, dict):
                # as the API server's JSON patch (evanphx/json-patch) has it: an absent member
                # tests equal to null (our status patch relies on it)
                found = parent.get(last) == operation.get("value")
            else:
                found = parent[_index(parent, last, for_add=False)] == operation.get("value")
            if not found:
                raise PatchError(f"test failed at {path!r}")
        elif op == "add":
            value = copy.deepcopy(operation.get("value"))
            if isinstance(parent, dict):
                parent[last] = value
            elif isinstance(parent, list):
                parent.insert(_index(parent, last, for_add=True), value)
            else:
                raise PatchError(f"{path}: no such path")
        elif op in ("replace", "remove"):
            if isinstance(parent, dict):
                if last not in parent:
                    raise PatchError(f"{path}: no such path")
                if op == "replace":
                    parent[last] = copy.deepcopy(operation.get("value"))
                else:
                    del parent[last]
            elif isinstance(parent, list):
                index = _index(parent, last, for_add=False)
                if op == "replace":
                    parent[index] = copy.deepcopy(operation.get("value"))
                else:
                    del parent[index]
            else:
                raise PatchError(f"{path}: no such path")
        else:
            raise PatchError(f"unsupported op {op!r}")
    return result


def apply_merge_patch(document: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, null removes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(document) if isinstance(document, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


def merged(verb: str, live: Obj | None, body: Any = None, content_type: str | None = None
           ) -> Obj | None:
    """The object after the write: `body` for a create, None for a delete, `live` patched."""
    if verb == "create":
        return copy.deepcopy(body) if isinstance(body, dict) else None
    if verb == "delete":
        return None
    if live is None:
        raise PatchError("the object was not listed")
    if content_type == JSON_PATCH:
        result = apply_json_patch(live, body)
    elif content_type == MERGE_PATCH:
        result = apply_merge_patch(live, body)
    else:
        raise PatchError(f"unsupported patch type {content_type!r}")
    return result if isinstance(result, dict) else None


def file_name(api_version: str, kind: str, namespace: str, name: str) -> str:
    """kubectl diff's name for an object's file: group.version.Kind.namespace.name."""
    return ".".join(part for part in (api_version.replace("/", "."), kind, namespace, name) if part)


def _yaml_lines(obj: Obj | None) -> list[str]:
    if obj is None:
        return []
    shown = copy.deepcopy(obj)
    metadata = shown.get("metadata")
    if isinstance(metadata, dict):
        metadata.pop("managedFields", None)  # kubectl diff leaves them out too
    text = yaml.dump(shown, Dumper=yaml.CSafeDumper, sort_keys=True, default_flow_style=False,
                     width=1 << 20)
    return text.splitlines(keepends=True)


def unified_diff(label: str, live: Obj | None, after: Obj | None) -> str:
    """`diff -u -N LIVE/label MERGED/label`, keys sorted on both sides."""
    lines = list(difflib.unified_diff(_yaml_lines(live), _yaml_lines(after),
                                      f"LIVE/{label}", f"MERGED/{label}"))
    if not lines:
        return ""
    return f"diff -u -N LIVE/{label} MERGED/{label}\n" + "".join(lines)  # YAML ends in "\n"
