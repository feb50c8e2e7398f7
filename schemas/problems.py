"""The body of every error: an RFC 9457 problem."""

from typing import NotRequired  # pydantic needs it before 3.12

from typing_extensions import TypedDict


class FieldError(TypedDict):
    field: str
    reason: str


class Problem(TypedDict):
    """`application/problem+json`. `errors` names each wrong field;
    `request_id` ties the answer to a log line."""

    type: str
    title: str
    status: int
    detail: NotRequired[str]
    errors: NotRequired[list[FieldError]]
    request_id: NotRequired[str]
