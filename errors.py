"""The project's two error types; everything else raises builtins with a message that names the fix."""


class UserInputError(ValueError):
    """Bad input from the user (a setting, a path, a dataset): one-line reason, exit code 2, no retry."""


class NotBuiltError(RuntimeError):
    """A stage or option that this version does not implement yet; the message says which."""
