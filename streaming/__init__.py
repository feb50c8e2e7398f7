"""The byte path: audio in and out, with no routing in it.

upstream  the shared client session for origins, and its SSRF guard
proxy     remote audio piped from its origin, or redirected to it
cache     remote audio kept on local disk, served like stored audio
stored    stored audio sent with sendfile
ranges    Range and conditional requests (RFC 9110)
plays     the play rule, and every stream's accounting from start to end
uploads   multipart uploads received into the media store, within bounds
audio     what uploaded bytes are: format, duration, read in worker processes

Called by the routes in handlers/; may import web, storage, metrics, schemas,
db and settings, never a route (tests/test_architecture.py).
"""
