"""The shapes of the caller's own identifiers: catalogue codes and customer external ids."""

from typing import Annotated

import msgspec

Code = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$", description="a caller-chosen code")]
ExternalId = Annotated[
    str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:@+-]{0,199}$", description="the caller's id of a customer")
]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Property = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
