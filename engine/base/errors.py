"""The error a user must fix in their workspace or its git repository."""


class WorkspaceError(Exception):
    """Something about the workspace the user must fix; the message says how."""
