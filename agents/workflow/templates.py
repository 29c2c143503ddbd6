"""Step inputs and outputs as templates over what the workflow knows so far.

How this works: a template is any JSON-like value. Inside it,

- a string that is exactly ``"$path"`` becomes the value at ``path`` (any type):
  ``"$input.topic"``, ``"$research"`` (a whole step output), ``"$previous.text"``;
- a string with ``{path}`` placeholders gets each replaced by the text of the
  value there (JSON for lists and mappings); ``{{`` and ``}}`` are literal braces;
- lists and mappings are resolved item by item; anything else stays as it is.

A path is dot-separated: mapping keys, or list indexes as numbers. The scope is
a mapping: ``input`` (the workflow's), each finished step's name, ``previous``
(the step before, in a sequence) and, for ``output`` selectors, ``result`` (the
step's own result). A missing name is an error that names the path, never an
empty string.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from mesh.errors import MeshError

__all__ = ["TemplateError", "lookup", "render"]

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z0-9_.\-]+)\}")
_DEPTH_MAX = 32


class TemplateError(MeshError):
    """A template names something the scope does not hold."""


def lookup(scope: Mapping[str, Any], path: str) -> Any:
    """The value at dotted ``path`` in ``scope``; ``TemplateError`` if absent."""
    value: Any = scope
    walked: list[str] = []
    for part in path.split("."):
        walked.append(part)
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            known = sorted(value) if isinstance(value, Mapping) else []
            raise TemplateError(f"${'.'.join(walked)} is not known"
                                + (f" (known here: {', '.join(map(str, known[:12]))})"
                                   if known else ""))
    return value


def render(template: Any, scope: Mapping[str, Any], _depth: int = 0) -> Any:
    """``template`` with every reference resolved against ``scope`` (module doc)."""
    if _depth > _DEPTH_MAX:
        raise TemplateError(f"template nested deeper than {_DEPTH_MAX} levels")
    if isinstance(template, str):
        if template.startswith("$") and len(template) > 1 and " " not in template:
            return lookup(scope, template[1:])
        return _PLACEHOLDER.sub(lambda match: _text(match, scope), template)
    if isinstance(template, Mapping):
        return {str(key): render(value, scope, _depth + 1) for key, value in template.items()}
    if isinstance(template, list | tuple):
        return [render(value, scope, _depth + 1) for value in template]
    return template


def _text(match: re.Match[str], scope: Mapping[str, Any]) -> str:
    if match.group(0) == "{{":
        return "{"
    if match.group(0) == "}}":
        return "}"
    value = lookup(scope, match.group(1))
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)
