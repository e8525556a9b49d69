"""Errors that the command line turns into one clear line and an exit code."""


class UserError(Exception):
    """Bad input from the user: a flag, a file or a run directory.

    The message names the flag or file and the fix. The CLI prints it as one line
    (``flatfl: error: ...``) and exits with code 2, never with a traceback.
    """

    exit_code = 2


class DivergenceError(Exception):
    """Training produced a non-finite loss or weight.

    The run directory keeps the last finite round; the CLI prints the message and exits 1.
    """

    exit_code = 1

    def __init__(self, message: str, round: int, client: int | None) -> None:
        super().__init__(message)
        self.round = round
        self.client = client


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during ``flatfl train``: the message names the run and the command that continues it."""
