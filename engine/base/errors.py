"""The errors a user must fix: in their workspace or its git repository, or a full disk."""

import errno


class WorkspaceError(Exception):
    """Something about the workspace the user must fix; the message says how."""


def disk_full_error(exc: BaseException | None) -> BaseException | None:
    """The ENOSPC of a file write, SQLite's SQLITE_FULL or git failing for lack of space,
    also when it caused a later error (a failed ROLLBACK after a full COMMIT); else None."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return exc
        text = str(exc)
        if "database or disk is full" in text or "No space left on device" in text \
                or "Disk quota exceeded" in text:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None
