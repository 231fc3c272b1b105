"""The one base class for errors a user can fix (bad config, missing data, corrupt file,
bad image, unreachable cluster). The CLI prints them as one line and exits 2; Serve turns
them into 4xx. Torch-free, so the CLI can catch them without importing torch."""


class UserError(Exception):
    """Anything a user can fix; the message names the problem and the fix."""


def one_line(err: BaseException) -> str:
    """A library's error as one line inside a UserError: all of its text, whitespace folded
    (advice after a line ending in a colon is not cut off)."""
    return " ".join(str(err).split()) or type(err).__name__
