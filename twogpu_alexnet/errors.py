"""The one exception type for mistakes a user can make and fix.

Library code raises :class:`UserError` with one sentence that names the problem and the fix;
the CLI prints that sentence and exits non-zero without a traceback. It subclasses ``ValueError``
so callers that expect ``ValueError`` for bad shapes, names or devices catch it too.
"""


class UserError(ValueError):
    """A problem in the user's input (path, config, shape, device, file) with a fix they can apply."""
