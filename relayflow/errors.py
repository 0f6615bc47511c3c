"""Errors of the shared core. Each area has one root; failures that cross the wire travel as
`relayflow.contracts.ErrorInfo`, not as exceptions."""

from __future__ import annotations


class RelayflowError(Exception):
    """Root of every error relayflow raises on purpose."""


class DefinitionError(RelayflowError):
    """A workflow or step definition is inconsistent (unknown dependency, cycle, duplicate)."""


class ConfigurationError(RelayflowError):
    """Settings that cannot work, found at start-up."""


class ServiceUnavailableError(RelayflowError):
    """The broker or the database cannot be reached; the message says how to start one."""


class StepError(RelayflowError):
    """Raised by a step body to fail with a chosen type and retryability.

    Any other exception fails the step as retryable with the exception's class name as its type.
    """

    def __init__(self, message: str, *, type: str | None = None, non_retryable: bool = False):
        super().__init__(message)
        self.message = message
        self.type = type or self.__class__.__name__
        self.non_retryable = non_retryable
