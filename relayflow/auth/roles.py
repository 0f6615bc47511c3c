"""Who may do what: the roles an API key carries and the actions each allows.

The gateway checks `allows(role, action)` before it acts; this table is the one place that
says which role may do which action. Roles nest: `operator` may do all that `submit` and `read`
may, and `admin` all that `operator` may.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum


class Role(StrEnum):
    SUBMIT = "submit"
    READ = "read"
    OPERATOR = "operator"
    ADMIN = "admin"


class Action(StrEnum):
    START = "start"  # start a workflow (POST /submit, POST /workflows)
    SIGNAL = "signal"  # send a signal to a workflow
    LIST = "list"  # list workflows
    READ = "read"  # read one workflow, its steps and items
    STREAM = "stream"  # stream events (SSE)
    CANCEL = "cancel"
    RETRY = "retry"
    REDRIVE = "redrive"  # send dead letters back
    MANAGE_KEYS = "manage_keys"  # create, list and revoke API keys


_SUBMIT = frozenset({Action.START, Action.SIGNAL})
_READ = frozenset({Action.LIST, Action.READ, Action.STREAM})
_OPERATOR = _SUBMIT | _READ | {Action.CANCEL, Action.RETRY, Action.REDRIVE}

PERMISSIONS: Mapping[Role, frozenset[Action]] = {
    Role.SUBMIT: _SUBMIT,
    Role.READ: _READ,
    Role.OPERATOR: _OPERATOR,
    Role.ADMIN: _OPERATOR | {Action.MANAGE_KEYS},
}


# Strongest first, for a credential that names several roles (an OIDC token's role claim): each
# allows all that those after it do, but `read` and `submit`, which do not nest; `read` ranks
# above, as the one the dashboard needs, and two roles are never merged into a third.
RANK: tuple[Role, ...] = (Role.ADMIN, Role.OPERATOR, Role.READ, Role.SUBMIT)


def strongest(roles: Iterable[Role]) -> Role | None:
    """The first of `roles` in `RANK`; None for none."""
    named = set(roles)
    return next((role for role in RANK if role in named), None)


def allows(role: Role, action: Action) -> bool:
    """Whether a credential with `role` may do `action`."""
    return action in PERMISSIONS[role]
