"""The one exception type a user can cause.

Everything a performer or researcher can get wrong (a missing file, an unknown vector name, a
vectors file made for another model, a bad YAML key) raises `MusicsteerError` with a message that
stands on one line. The CLI prints it as `musicsteer: error: <message>` and exits 2; it never shows
a traceback for these.
"""


class MusicsteerError(Exception):
    """A failure caused by the user's input, reported as one clear line."""
