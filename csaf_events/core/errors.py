"""Errors raised by the store. Every error of the store derives from `CsafError`."""

from __future__ import annotations


class CsafError(Exception):
    """Base of every error the store raises on purpose."""


class DataAccessError(CsafError):
    """The store could not be reached, timed out, or the outcome of a write is unknown.

    `may_have_written` says which: False when nothing was written (the call can simply be
    retried), True when the write may or may not have happened (exactly once, or not at
    all) and the caller must reconcile, e.g. by reading it back.
    """

    def __init__(self, message: str, *, may_have_written: bool = True) -> None:
        super().__init__(message)
        self.may_have_written = may_have_written

    def __reduce__(self) -> tuple:  # keeps the flag through pickling (process pools, tests)
        return (_data_access_error, (str(self), self.may_have_written))


def _data_access_error(message: str, may_have_written: bool) -> DataAccessError:
    return DataAccessError(message, may_have_written=may_have_written)


def unreachable(what: str, cause: BaseException) -> DataAccessError:
    """A failure before anything could be written (a read, a boot step, a lookup)."""
    return DataAccessError(f"{what}: {type(cause).__name__}: {cause}", may_have_written=False)


class WrongUserError(CsafError):
    """A session was re-registered with a different user id than it was created with."""


class MessageIdAlreadyExistsError(CsafError):
    """The client or server message id is already stored for that session."""


class NotOwnerError(CsafError):
    """This node does not own the partition a command was sent to (it moved, or the
    transaction that carried it aborted): nothing was written, so it is retried where the
    partition is owned now."""


class ProducerFencedError(DataAccessError):
    """A transaction was refused because this node's transactional producer was fenced:
    another process opened this node's transactional id, or the transaction timed out while
    the node stalled. Nothing was written. Not retried for the caller: another incarnation
    of this node may be running."""

    def __init__(self, message: str, *, may_have_written: bool = False) -> None:
        super().__init__(message, may_have_written=may_have_written)


class TransactionAbortedError(NotOwnerError):
    """A transaction was aborted, nothing written: the owners group has moved on from this
    member (a stale generation), or the broker asked for the abort. Retried where the
    partition is owned now."""


class ConflictError(DataAccessError):
    """A unit of work was not committed because what one of its calls returned (or found) has
    changed since it was made: another writer got there first. Nothing was written; run the
    unit again."""

    def __init__(self, message: str, *, may_have_written: bool = False) -> None:
        super().__init__(message, may_have_written=may_have_written)


class UnitOfWorkError(CsafError):
    """A unit of work used the wrong way: after its commit or rollback, nested in another,
    or for a call it cannot make for another session. Nothing was written by that call."""
