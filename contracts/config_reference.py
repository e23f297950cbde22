"""The configuration reference, generated from the configuration's models so it cannot drift.

``hybridspend config reference`` prints it; docs/configuration-reference.md is its output (a test
holds the two equal).  Every field of every section is listed with its type, default and
description; a list or mapping of models is followed into its items (``onprem_assets[].name``).
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from .config import Config

HEADER = """# Configuration reference

Generated from the configuration's models (`contracts/config.py`) by `hybridspend config reference`;
`tests/test_docs.py` fails when this page and the models disagree. [Configuration](configuration.md)
explains where the file is read from, the environment overrides and the secret references.

| field | type | default | what it is |
|---|---|---|---|
"""


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models an annotation holds: itself, its list items, mapping values or union members."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _type_text(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _type_text(typing.get_args(annotation)[0])
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_text(a) for a in typing.get_args(annotation) if a is not type(None)) + " or null"
    if origin in (list, tuple, set):
        return f"list of {_type_text(typing.get_args(annotation)[0])}"
    if origin is dict:
        key, value = typing.get_args(annotation)
        return f"map {_type_text(key)} → {_type_text(value)}"
    if isinstance(annotation, type):
        return {"Decimal": "number", "str": "text", "int": "integer", "bool": "true/false", "Path": "path",
                "date": "date"}.get(annotation.__name__, annotation.__name__)
    return str(annotation).replace("typing.", "")


def _default_text(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "(section)"
    if value in (None, [], {}, ""):
        return {None: "null", "": '""'}.get(value, "empty") if not isinstance(value, (list, dict)) else "empty"
    return f"`{value}`"


def rows(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(field path, type, default, description) of every field, depth first."""
    out = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        annotation = field.annotation
        nested = _models_in(annotation)
        is_list = typing.get_origin(annotation) is list
        is_map = typing.get_origin(annotation) is dict
        if nested and (is_list or is_map):
            type_text = f"list of {nested[0].__name__}" if is_list else f"map of {nested[0].__name__}"
        elif nested:
            type_text = "section"
        else:
            type_text = _type_text(annotation)
        description = (field.description or (nested[0].__doc__ or "").strip().split("\n")[0] if nested else
                       field.description or "")
        out.append((path, type_text, _default_text(field), description.replace("|", "\\|").replace("\n", " ")))
        for sub in nested:
            out.extend(rows(sub, f"{path}[]." if is_list else f"{path}.<key>." if is_map else f"{path}."))
    return out


def reference_markdown() -> str:
    return HEADER + "".join(f"| `{p}` | {t} | {d} | {w} |\n" for p, t, d, w in rows())
