"""One exception type for every user-facing failure.

The CLI catches `FPTError` and prints its message as a single line with a
non-zero exit, so bad input never surfaces as a traceback.
"""


class FPTError(Exception):
    """A user-facing error: the message is one line that says what to fix."""

    #: True in a torchrun worker whose error rank 0 prints: the CLI exits without repeating it.
    quiet: bool = False


class UnsafeFile(FPTError):
    """A file someone handed us would run code if loaded the usual way (a pickle naming os.system, a model
    folder with its own modelling code): refused before anything in it runs. Never skipped over quietly."""
