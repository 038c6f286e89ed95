"""Task selectors of the form ``NAME[:key=value,...]`` and the registry of built-in tasks."""

from __future__ import annotations

from protocol.tasks.base import Task
from protocol.tasks.builtin import available_tasks, builtin_factories
from protocol.tasks.task_file import is_task_file, load_task_file
from protocol.untrusted import printable

__all__ = ["MAX_SELECTOR_CHARS", "available_tasks", "load_task", "load_task_on", "parse_selector"]

#: The longest task selector accepted (a name and its parameters, or a file path).
MAX_SELECTOR_CHARS = 4096


def parse_selector(selector: str) -> tuple[str, dict[str, str]]:
    """Split ``"name:k=v,k2=v2"`` into ``("name", {"k": "v", "k2": "v2"})``.

    Raises ``ValueError`` with the offending fragment on malformed input.
    """
    selector = selector.strip()
    if not selector:
        raise ValueError("empty task selector; expected NAME[:key=value,...]")
    name, _, rest = selector.partition(":")
    params: dict[str, str] = {}
    if rest:
        for item in rest.split(","):
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ValueError(
                    f"malformed task parameter {item!r} in {selector!r}; expected key=value"
                )
            if key.strip() in params:
                raise ValueError(f"task parameter {key.strip()!r} given twice in {selector!r}")
            params[key.strip()] = value.strip()
    return name.strip(), params


def load_task(selector: str) -> Task:
    """Build the task a selector names. Raises ``ValueError`` naming the valid choices on error.

    A selector ending in ``.toml`` or ``.json`` is a task declaration file (see
    ``protocol.tasks.task_file``).
    """
    if len(selector) > MAX_SELECTOR_CHARS:
        raise ValueError(
            f"task selector is {len(selector):,} characters long; at most "
            f"{MAX_SELECTOR_CHARS:,} are accepted"
        )
    try:
        if is_task_file(selector):
            return load_task_file(selector.strip())
        name, params = parse_selector(selector)
        factories = builtin_factories()
        if name not in factories:
            raise ValueError(f"unknown task {name!r}; available: {', '.join(sorted(factories))}")
        return factories[name](selector, params)
    except ValueError:
        raise
    except (RecursionError, MemoryError, OSError, LookupError, TypeError, AttributeError) as exc:
        # bad input must read as bad input (exit 2), never as a crash or a reject
        raise ValueError(
            f"cannot load task {printable(selector, 200)}: {type(exc).__name__}: "
            f"{printable(str(exc), 500)}"
        ) from exc


def load_task_on(selector: str, device: str = "auto") -> Task:
    """``load_task`` with retraining placed on ``device`` (``auto``: CUDA when available; ``cpu``;
    ``cuda[:i]``). The device is not part of the task identity: results are the same function
    of (task, subset, seed) on each. ``ValueError`` for an unknown or unavailable device, or a
    task that has no device to choose (its retraining is closed-form on the CPU)."""
    task = load_task(selector)
    if device == "auto":
        return task
    from protocol.trainer import resolve_device

    chosen = resolve_device(device)
    if not hasattr(task, "device"):
        if chosen.type != "cpu":
            raise ValueError(f"task {task.name!r} retrains on the CPU only; --device {device}")
        return task
    task.device = str(chosen)  # type: ignore[attr-defined]
    return task
