"""Headers every stream response carries, whichever its source.

- `Cache-Control: no-store`: a stream is never reused from a cache, so
  every listen reaches the server and is counted (a browser's heuristic
  freshness, RFC 9111 §4.2.2, would otherwise replay a clip from its cache
  unseen, and a 304 revalidation is never a play). The cost: a replay in
  the same browser downloads the clip again. It is also never weaker than
  what an origin asked for (`private`, `no-cache`, `no-store`).
- An audio Content-Type, always (`audio_type`), with
  `X-Content-Type-Options: nosniff` and a CSP that allows nothing and
  sandboxes the document: a stream URL opened as a page can never run
  script on the API's origin, whatever bytes or type an origin sends.
"""

import re

from schemas.fields import CONTENT_TYPE

STREAM_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
}


def audio_type(origin_type: str | None, clip_type: str) -> str:
    """The origin's Content-Type when it is audio, else the clip's own
    (validated `audio/…` when the clip was created)."""
    media_type = (origin_type or "").partition(";")[0].strip().lower()
    return media_type if re.fullmatch(CONTENT_TYPE, media_type) else clip_type
