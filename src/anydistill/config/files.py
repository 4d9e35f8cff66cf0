"""Recipes in and out: read a YAML file, apply `key=value` overrides, validate into one
sentence on error, resolve local paths, dump."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from anydistill.config.schema import RunConfig
from anydistill.errors import AnydistillError, ConfigError


def _format_location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if not str(p).startswith("function-after"))


def _explain(err: ValidationError) -> str:
    """Turn pydantic's report into one sentence that names the first bad key (a misspelt key
    first: it is also why a required key looks missing)."""
    errors = err.errors()
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    key = _format_location(first["loc"])
    kind = first["type"]
    if kind == "extra_forbidden":
        parent = first["loc"][:-1]
        missing = [
            str(e["loc"][-1])
            for e in errors
            if e["type"] == "missing" and tuple(e["loc"][:-1]) == tuple(parent)
        ]
        close = difflib.get_close_matches(str(first["loc"][-1]), missing, n=1)
        hint = (
            f"did you mean `{close[0]}`?"
            if close
            else "check its spelling against the README's recipe reference"
        )
        return f"unknown key `{key}`: {hint}"
    if kind == "missing":
        return f"missing required key `{key}`"
    msg = first["msg"].removeprefix("Value error, ")
    got = first.get("input")
    where = f"`{key}`" if key else "config"
    if kind.startswith("value_error") or kind == "assertion_error":
        return f"{where}: {msg}"
    return f"{where}: {msg} (got {got!r})"


def parse_value(text: str) -> Any:
    """Parse the right side of `key=value` as YAML, so numbers, bools and lists work."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides in order; list items are addressed by index."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override `{item}` must look like `section.key=value`")
        key, _, raw = item.partition("=")
        parts = key.strip().split(".")
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"override `{key}`: `{part}` is not an index of the list")
                node = node[int(part)]
                continue
            if not isinstance(node, dict):
                raise ConfigError(f"override `{key}`: `{'.'.join(parts[:i])}` is not a section")
            node = node.setdefault(part, {})
        last = parts[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise ConfigError(f"override `{key}`: `{last}` is not an index of the list")
            node[int(last)] = parse_value(raw)
        elif isinstance(node, dict):
            node[last] = parse_value(raw)
        else:
            raise ConfigError(f"override `{key}`: its parent is not a section")
    return data


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_explain(err)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML recipe, apply overrides, validate. Raises ConfigError with one sentence."""
    from anydistill.paths import read_text

    path = Path(path)
    try:
        text = read_text(path, "config", hint="pass the path to a YAML recipe")
    except AnydistillError as err:
        raise ConfigError(str(err)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping with sections teacher, student, data, ...")
    data = apply_overrides(data, overrides or [])
    return config_from_dict(data)


def _local(value: str | None) -> str | None:
    """An existing or path-looking local path made absolute; hub ids stay as they are."""
    if value is None:
        return None
    path = Path(value).expanduser()
    if value.startswith((".", "/", "~")) or path.exists():
        return str(path.resolve())
    return value


def resolve_paths(cfg: RunConfig) -> RunConfig:
    """The config with every local path absolute, so that what a run saves in its
    config.yaml still finds the teacher, data and store from another working directory."""
    data = cfg.model_dump(mode="json", by_alias=True)
    for section in [data["teacher"], data["student"], *(data.get("teachers") or [])]:
        section["path"] = _local(section["path"])
        if isinstance(section["tokenizer"], str):
            section["tokenizer"] = _local(section["tokenizer"])
    for key in ("path", "eval_path"):
        data["data"][key] = _local(data["data"][key])
    data["source"]["store"] = _local(data["source"]["store"])
    data["output"]["dir"] = str(Path(data["output"]["dir"]).expanduser().resolve())
    selection = data["objective"]["token_selection"]
    if selection is not None:
        selection["reference"] = _local(selection["reference"])
    return config_from_dict(data)


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True), sort_keys=False)
