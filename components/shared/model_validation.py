"""Validate a Kubernetes object (a dict) against the generated pydantic model of its kind (e.g. kubeflow-trainer-api's
``TrainerV1alpha1TrainJob``) strictly: the generated models ignore unknown fields, so they are looked for here, field
by field, with the exact path of the first problem. Used for TrainJob manifests and, in the tests, every custom
kind under manifests/."""

from __future__ import annotations

import types
import typing
from typing import Any


def model_problem(value: Any, model: type, path: str = "") -> str | None:
    """The first unknown field, missing required field, invalid value, or value the model's round trip
    (``from_dict`` then ``to_dict``) does not keep, under ``value`` read as ``model``; None if there is none."""
    problem = _first_problem(value, model, path)
    if problem is None and not path:
        problem = _first_loss(value, model.from_dict(value).to_dict(), "")
    return problem


def _first_problem(value: Any, model: type, path: str) -> str | None:
    """Children are checked before the node itself, so an error left at the node concerns its own scalars."""
    from pydantic import ValidationError

    where = path or "<top level>"
    if "actual_instance" in model.model_fields:  # a oneOf wrapper (Quantity, IntOrString), not an object
        try:
            model.from_dict(value)
        except (ValueError, ValidationError):
            return f"{where}: expected one of {', '.join(sorted(model.model_fields['one_of_schemas'].default))}"
        return None
    if not isinstance(value, dict):
        return f"{where}: expected an object, got {type(value).__name__}"
    fields = {info.alias or name: info for name, info in model.model_fields.items()}
    for key, child in value.items():
        if key not in fields:
            return f"{_join(path, key)}: unknown field (not in {model.__name__})"
        problem = _child_problem(child, fields[key].annotation, _join(path, key))
        if problem:
            return problem
    for key, info in fields.items():
        if info.is_required() and value.get(key) is None:
            return f"{_join(path, key)}: required"
    try:
        model.from_dict(value)
    except ValidationError as exc:
        error = exc.errors()[0]
        location = path
        for part in error["loc"]:
            location = f"{location}[{part}]" if isinstance(part, int) else _join(location, str(part))
        return f"{location or '<top level>'}: {error['msg']}"
    return None


def _child_problem(value: Any, annotation: Any, path: str) -> str | None:
    """Descend into a field's value following its annotation (Optional, Annotated, list, dict, a model)."""
    from pydantic import BaseModel

    if value is None:
        return None
    arguments = [argument for argument in typing.get_args(annotation) if argument is not type(None)]
    origin = typing.get_origin(annotation)
    if (origin in (typing.Union, types.UnionType) and len(arguments) == 1) or origin is typing.Annotated:
        return _child_problem(value, arguments[0], path)
    if origin is list:
        if not isinstance(value, list):
            return f"{path}: expected a list, got {type(value).__name__}"
        problems = (_child_problem(item, arguments[0], f"{path}[{index}]") for index, item in enumerate(value))
        return next((problem for problem in problems if problem), None)
    if origin is dict:
        if not isinstance(value, dict):
            return f"{path}: expected an object, got {type(value).__name__}"
        problems = (_child_problem(item, arguments[1], _join(path, key)) for key, item in value.items())
        return next((problem for problem in problems if problem), None)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _first_problem(value, annotation, path)
    return None  # a scalar: the enclosing model's own validation checks it


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _first_loss(sent: Any, kept: Any, path: str) -> str | None:
    """First key or value of ``sent`` that the model's round trip did not keep."""
    if isinstance(sent, dict):
        if not isinstance(kept, dict):
            return f"{path}: changed by the model to {kept!r}"
        for key, value in sent.items():
            child_path = _join(path, key)
            if key not in kept:
                return f"{child_path}: unknown field (dropped by the model)"
            problem = _first_loss(value, kept[key], child_path)
            if problem:
                return problem
        return None
    if isinstance(sent, list):
        if not isinstance(kept, list) or len(kept) != len(sent):
            return f"{path}: changed by the model to {kept!r}"
        for index, (item, kept_item) in enumerate(zip(sent, kept, strict=True)):
            problem = _first_loss(item, kept_item, f"{path}[{index}]")
            if problem:
                return problem
        return None
    if sent != kept or type(sent) is not type(kept):
        return f"{path}: changed by the model from {sent!r} to {kept!r}"
    return None
