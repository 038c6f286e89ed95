"""Tasks: everything both parties share (data, model, recipe, output function, targets, p)."""

from protocol.tasks.base import RetrainResult, Task, TaskIdentity
from protocol.tasks.registry import available_tasks, load_task, load_task_on, parse_selector

__all__ = [
    "RetrainResult",
    "Task",
    "TaskIdentity",
    "available_tasks",
    "load_task",
    "load_task_on",
    "parse_selector",
]
