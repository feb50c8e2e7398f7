"""Field types shared by request and response shapes."""

from typing import Annotated

from pydantic import AfterValidator, Field, StringConstraints

# PostgreSQL's bigint, the type of every id, and integer (a bitrate).
BIGINT_MAX = 2**63 - 1
INTEGER_MAX = 2**31 - 1
# The longest clip the catalogue takes (the table's CHECK): a day.
MAX_DURATION_SECONDS = 86400


def positive_bigint(raw: str) -> int | None:
    """`raw` as an integer from 1 to BIGINT_MAX written in ASCII digits, else
    None. Every number a URL carries (an id, a signed URL's expiry) is read
    here: str.isdigit() also says yes to "²" (which int() refuses) and to
    other scripts' digits (which int() reads), and int() refuses more than
    4,300 digits; either would be a 500 where the client deserves a 400."""
    if not (raw.isascii() and raw.isdigit()):
        return None
    digits = raw.lstrip("0")
    if not digits or len(digits) > len(str(BIGINT_MAX)):
        return None
    value = int(digits)
    return value if value <= BIGINT_MAX else None


def storable(value: str) -> str:
    """PostgreSQL text cannot hold NUL: refuse it as a 400, not a database
    error (500) later."""
    if "\x00" in value:
        raise ValueError("must not contain a NUL character")
    return value


GENRE = r"^[a-z0-9]+(-[a-z0-9]+)*$"
CONTENT_TYPE = r"^audio/[a-z0-9.+-]+$"
SHA256 = r"^[0-9a-f]{64}$"

Genre = Annotated[str, StringConstraints(max_length=40, pattern=GENRE)]
Title = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(storable),
]
Description = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=2000), AfterValidator(storable)
]
AudioUrl = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=2048), AfterValidator(storable)
]
ContentType = Annotated[str, StringConstraints(pattern=CONTENT_TYPE)]
DurationSeconds = Annotated[float, Field(gt=0, le=MAX_DURATION_SECONDS, strict=True)]
Search = Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(storable)]
