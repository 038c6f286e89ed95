"""The built-in tasks by name: the synthetic task and the real ones.

The table is built on first use, so that importing it does not import torch or scikit-learn.
"""

from __future__ import annotations

from collections.abc import Callable

from protocol.tasks.base import Task

# name -> factory(selector, params)
TaskFactory = Callable[[str, dict[str, str]], Task]


def builtin_factories() -> dict[str, TaskFactory]:
    """Every built-in task's factory by name; a factory raises ``ValueError`` on bad parameters."""
    from protocol.tasks.fashion_probe import FACTORIES as FASHION_PROBE_FACTORIES
    from protocol.tasks.real import REAL_TASK_FACTORIES
    from protocol.tasks.synthetic import SyntheticTask

    return {
        "synthetic": SyntheticTask.from_params,
        **REAL_TASK_FACTORIES,
        **FASHION_PROBE_FACTORIES,
    }


def available_tasks() -> list[str]:
    """Names of every built-in task."""
    return sorted(builtin_factories())
