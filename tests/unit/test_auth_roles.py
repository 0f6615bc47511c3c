"""The permission model (`relayflow.auth.roles`): which role may do which action, as the
issue's roles say, so that the gateway checks one table."""

from __future__ import annotations

import pytest

from relayflow.auth import PERMISSIONS, Action, Role, allows


def test_every_role_has_permissions_and_every_action_a_role() -> None:
    """A role added without a row, or an action no role may do, is a gap the gateway would
    meet as a KeyError or a route nobody can call."""
    assert set(PERMISSIONS) == set(Role)
    assert set().union(*PERMISSIONS.values()) == set(Action)


@pytest.mark.parametrize(
    ("role", "allowed"),
    [
        (Role.SUBMIT, {Action.START, Action.SIGNAL}),
        (Role.READ, {Action.LIST, Action.READ, Action.STREAM}),
        (
            Role.OPERATOR,
            {
                Action.START,
                Action.SIGNAL,
                Action.LIST,
                Action.READ,
                Action.STREAM,
                Action.CANCEL,
                Action.RETRY,
                Action.REDRIVE,
            },
        ),
        (Role.ADMIN, set(Action)),
    ],
)
def test_each_role_allows_exactly_its_actions(role: Role, allowed: set[Action]) -> None:
    """The roles as issue 10 defines them: submit starts and signals; read lists, reads and
    streams; operator also cancels, retries and redrives; admin also manages keys."""
    assert {action for action in Action if allows(role, action)} == allowed


def test_a_read_key_cannot_cancel_retry_or_start() -> None:
    """The rule the issue names: a read-only credential changes nothing."""
    for action in (Action.CANCEL, Action.RETRY, Action.REDRIVE, Action.START, Action.SIGNAL):
        assert not allows(Role.READ, action)


def test_only_admin_manages_keys() -> None:
    """A leaked operator key must not be able to mint itself more keys."""
    assert [role for role in Role if allows(role, Action.MANAGE_KEYS)] == [Role.ADMIN]


def test_roles_nest() -> None:
    """Operator may do all that submit and read may, admin all that operator may: promoting a
    key never takes a permission away."""
    assert PERMISSIONS[Role.SUBMIT] | PERMISSIONS[Role.READ] < PERMISSIONS[Role.OPERATOR]
    assert PERMISSIONS[Role.OPERATOR] < PERMISSIONS[Role.ADMIN]
