"""The rule a name stands for: the one place a :class:`RuleName` becomes a :class:`Rule`."""

from __future__ import annotations

from protocol.rules.base import Rule, RuleName
from protocol.rules.paper import PaperRule
from protocol.rules.practical import PracticalRule


def rule_for(name: RuleName) -> Rule:
    """The rule called ``name``: :class:`PracticalRule` or the paper's at manual/theory sizes."""
    if name is RuleName.PRACTICAL:
        return PracticalRule()
    return PaperRule(name)
