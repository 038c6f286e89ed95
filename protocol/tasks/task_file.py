"""Task declarations in a file: ``--task my-task.toml`` or ``--task my-task.json``.

A declaration names a registered task and its parameters, e.g. (TOML)::

    task = "digits-logreg"
    params = { z = 5, p = 0.5 }

or (JSON) ``{"task": "npz", "params": {"path": "data.npz", "z": 3}}``. Parameter values may be
strings, numbers or booleans; they are passed to the task exactly as ``key=value`` selector text
would be. A relative ``path`` parameter is resolved against the declaration file's directory. The
file's location is not part of the task identity: the spec and the data bytes are.
"""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path
from typing import Any

from protocol.tasks.base import Task
from protocol.tasks.builtin import builtin_factories

#: File suffixes that make a selector a task declaration file.
TASK_FILE_SUFFIXES = (".toml", ".json")

_TOP_KEYS = {"task", "params"}

#: The largest declaration file read (a task name and a few parameters need far less).
MAX_TASK_FILE_BYTES = 64 * 1024


def is_task_file(selector: str) -> bool:
    """True when ``selector`` names a declaration file (ends in .toml or .json)."""
    return selector.strip().lower().endswith(TASK_FILE_SUFFIXES)


def _param_text(key: str, value: Any, origin: Path) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{origin}: parameter {key!r} must be finite, got {value!r}")
        return repr(value)
    if isinstance(value, str):
        if "," in value:
            raise ValueError(f"{origin}: parameter {key!r} must not contain ',' ({value!r})")
        return value
    raise ValueError(
        f"{origin}: parameter {key!r} must be a string, number or boolean, "
        f"got {type(value).__name__}"
    )


def read_task_file(path: str | Path) -> tuple[str, dict[str, str]]:
    """Parse a declaration into (task name, selector-style string parameters).

    Raises ``ValueError`` naming the file and the problem (missing file, bad syntax, missing or
    unknown keys, unsupported value types).
    """
    origin = Path(path).expanduser()
    if not origin.is_file():
        raise ValueError(f"task file {str(origin)!r} does not exist")
    size = origin.stat().st_size
    if size > MAX_TASK_FILE_BYTES:
        raise ValueError(
            f"task file {str(origin)!r} is {size:,} bytes; a declaration is at most "
            f"{MAX_TASK_FILE_BYTES:,} (the data belongs in the npz file it names)"
        )
    try:
        text = origin.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"task file {str(origin)!r} is not UTF-8 text: {exc}") from exc
    try:
        if origin.suffix.lower() == ".toml":
            doc: Any = tomllib.loads(text)
        else:
            doc = json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(
            f"task file {str(origin)!r} is not valid {origin.suffix[1:]}: {exc}"
        ) from exc
    except RecursionError as exc:
        raise ValueError(
            f"task file {str(origin)!r} is nested too deeply to be a task declaration"
        ) from exc
    if not isinstance(doc, dict):
        raise ValueError(f"task file {str(origin)!r} must hold a table/object")
    unknown = sorted(set(doc) - _TOP_KEYS)
    if unknown:
        raise ValueError(
            f"task file {str(origin)!r}: unknown key(s) {', '.join(unknown)}; "
            "expected 'task' (a name) and optional 'params' (a table)"
        )
    name = doc.get("task")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(
            f"task file {str(origin)!r}: 'task' must name a task, e.g. 'digits-logreg'"
        )
    raw = doc.get("params", {})
    if not isinstance(raw, dict):
        raise ValueError(f"task file {str(origin)!r}: 'params' must be a table/object")
    params = {str(k): _param_text(str(k), v, origin) for k, v in raw.items()}
    if "path" in params and not Path(params["path"]).expanduser().is_absolute():
        params["path"] = str((origin.parent / params["path"]).resolve())
    return name.strip(), params


def load_task_file(path: str | Path) -> Task:
    """Build the task a declaration file names; its selector is the file path as given."""
    name, params = read_task_file(path)
    factories = builtin_factories()
    if name not in factories:
        raise ValueError(
            f"task file {str(path)!r}: unknown task {name!r}; available: "
            + ", ".join(sorted(factories))
        )
    return factories[name](str(path), params)
