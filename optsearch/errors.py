"""The one error type for bad input: it names the file, the key and the value."""

from __future__ import annotations


class ConfigError(ValueError):
    """Bad input. ``str(err)`` is the one-line message the CLI prints before exiting with 2."""

    def __init__(self, key: str, value: object, message: str, file: str | None = None):
        self.key = key
        self.value = value
        self.message = message
        self.file = file
        super().__init__(str(self))

    def __reduce__(self):  # pickles (Ray sends it from workers) with all four fields
        return (type(self), (self.key, self.value, self.message, self.file))

    def with_file(self, file: str) -> "ConfigError":
        return ConfigError(self.key, self.value, self.message, file=file)

    def __str__(self) -> str:
        where = f"{self.file}: " if self.file else ""
        if self.key:
            return f"{where}{self.key} = {shown(self.value)}: {self.message}"
        return f"{where}{self.message}"


def shown(value: object, limit: int = 200) -> str:
    """``repr(value)`` on one line, cut to about ``limit`` characters."""
    text = repr(value).replace("\n", "\\n")
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class PointRejected(ValueError):
    """The builders reject a point that the sampler chose (say, a warmup that ends after the
    first milestone): that trial fails with this reason and the study goes on. Not a
    ``ConfigError``: only input the user wrote stops a study."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)

    def __reduce__(self):
        return (type(self), (self.reason,))


class StudyError(RuntimeError):
    """The study could not go on (its coordinator died, every worker was lost): what ran is
    kept. The CLI prints it as one line and exits with 1."""
