"""The back end's one error: a status, a code the mini-program can branch on, and a message naming the fix."""

from __future__ import annotations


class BackendError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
