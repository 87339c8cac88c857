"""The project's error types that cross layers. Each carries a one-line message naming the
file, line or key and the fix; entry points print it as "error: ..." and exit 2."""


class ConfigError(ValueError):
    """A one-line message naming the file/key and the fix."""


class RunError(RuntimeError):
    """A problem found while running, reported as one line."""
