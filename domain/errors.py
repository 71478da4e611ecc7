"""The kinds of refusal. Each rule's own exception lives beside its aggregate and subclasses one.

`api/errors.py` maps kinds to statuses: Invalid 422, NotFound 404, Conflict 409.
"""


class Refusal(Exception):
    """A command was refused; nothing was recorded."""


class Invalid(Refusal):
    """Well-formed but invalid on its own; names the field (`prices[0].meter_code`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


class NotFound(Refusal):
    def __init__(self, kind: str, key: str) -> None:
        super().__init__(f"no {kind} {key!r}")
        self.kind, self.key = kind, key


class Conflict(Refusal):
    """Conflicts with the current state: a duplicate, a race, an invalid change of state."""
