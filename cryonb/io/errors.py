"""One error type for bad input files: it names the file, the problem and the fix."""

from __future__ import annotations

import os

__all__ = ["CryonbInputError", "input_error"]


class CryonbInputError(ValueError):
    """A file given to cryonb cannot be used as it is.

    Attributes
    ----------
    path : str
        The offending file.
    problem : str
        What is wrong with it.
    fix : str
        What the user can do about it.
    """

    def __init__(self, path: str | os.PathLike, problem: str, fix: str) -> None:
        self.path = str(path)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{self.path}: {problem}. Fix: {fix}")


def input_error(path: str | os.PathLike, problem: str, fix: str) -> CryonbInputError:
    """Build (not raise) a :class:`CryonbInputError`; use as ``raise input_error(...)``."""
    return CryonbInputError(path, problem, fix)
