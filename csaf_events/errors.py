"""Errors raised by the store. Every error of the store derives from `CsafError`."""

from __future__ import annotations


class CsafError(Exception):
    """Base of every error the store raises on purpose."""


class DataAccessError(CsafError):
    """The store could not be reached, timed out, or the outcome of a write is unknown.

    A caller that gets this for a write must assume the write may or may not have
    happened (exactly once, or not at all) and reconcile, e.g. by reading it back.
    """


class WrongUserError(CsafError):
    """A session was re-registered with a different user id than it was created with."""


class MessageIdAlreadyExistsError(CsafError):
    """The client or server message id is already stored for that session."""


class NotOwnerError(CsafError):
    """This node does not own the partition a command was sent to (it moved); retried by routing."""
