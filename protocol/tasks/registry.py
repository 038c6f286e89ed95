"""Task selectors of the form ``NAME[:key=value,...]`` and the registry of built-in tasks."""

from __future__ import annotations

from collections.abc import Callable

from protocol.tasks.base import Task

# name -> factory(selector, params) ; populated by _builtin_factories() lazily so that importing the
# registry does not import torch or scikit-learn.
TaskFactory = Callable[[str, dict[str, str]], Task]


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


def _builtin_factories() -> dict[str, TaskFactory]:
    from protocol.tasks.synthetic import SyntheticTask

    factories: dict[str, TaskFactory] = {"synthetic": SyntheticTask.from_params}
    try:  # real tasks (issue 3) register here when present
        from protocol.tasks.real import REAL_TASK_FACTORIES
    except ImportError:  # pragma: no cover - real tasks not installed yet
        REAL_TASK_FACTORIES = {}
    factories.update(REAL_TASK_FACTORIES)
    return factories


def available_tasks() -> list[str]:
    """Names of every built-in task."""
    return sorted(_builtin_factories())


def load_task(selector: str) -> Task:
    """Build the task a selector names. Raises ``ValueError`` naming the valid choices on error.

    A selector ending in ``.toml`` or ``.json`` is a task declaration file (see
    ``protocol.tasks.task_file``).
    """
    from protocol.tasks.task_file import is_task_file, load_task_file

    if is_task_file(selector):
        return load_task_file(selector.strip())
    name, params = parse_selector(selector)
    factories = _builtin_factories()
    if name not in factories:
        raise ValueError(f"unknown task {name!r}; available: {', '.join(sorted(factories))}")
    return factories[name](selector, params)
