"""The body of every error: an RFC 9457 problem."""

from typing import NotRequired  # pydantic needs it before 3.12

from pydantic import ConfigDict, with_config
from typing_extensions import TypedDict


class FieldError(TypedDict):
    field: str
    reason: str


@with_config(
    ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "about:blank",
                    "title": "Bad Request",
                    "status": 400,
                    "detail": "The request body is not a valid clip",
                    "errors": [{"field": "genre", "reason": "String should match pattern"}],
                    "request_id": "4f1c2a9e7b3d4c5e",
                }
            ]
        }
    )
)
class Problem(TypedDict):
    """`application/problem+json`. `errors` names each wrong field;
    `request_id` ties the answer to a log line."""

    type: str
    title: str
    status: int
    detail: NotRequired[str]
    errors: NotRequired[list[FieldError]]
    request_id: NotRequired[str]
