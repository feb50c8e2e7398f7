"""Every knob of the service, typed and validated once at start-up.

Only `server.main()` and the command-line entry points read the environment;
everything else receives a `Settings` instance. This module imports nothing
of the project's (tests/test_architecture.py checks it): every other part may
depend on it.
"""

import ipaddress
import os
import ssl
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit, urlunsplit

from aiohttp import web
from dotenv import load_dotenv
from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

ROOT = Path(__file__).resolve().parent


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


CommaList = Annotated[tuple[str, ...], BeforeValidator(_split_commas)]


def _upper(value: object) -> object:
    return value.strip().upper() if isinstance(value, str) else value


# LOG_LEVEL=debug is as clear as DEBUG: logging's own names, any case.
LogLevel = Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR"], BeforeValidator(_upper)]

ROLES = ("read", "write")
# Validation context: API keys a copy keeps from the settings it came from.
KEYS_READ = "api_key_entries"
MIN_KEY_LENGTH = 16
# Constant MP3 bitrates (kbit/s) LAME encodes at 44.1/48 kHz.
PREVIEW_BITRATES = (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)


def parse_keys(text: str, source: str) -> list[tuple[str, str]]:
    """`role:key` entries separated by commas or lines (`#` starts a comment),
    as API_KEYS and API_KEYS_FILE hold them. Errors name the entry's
    position, never the key."""
    entries = []
    items = [i.split("#", 1)[0].strip() for line in text.splitlines() for i in line.split(",")]
    for number, item in enumerate(filter(None, items), start=1):
        role, sep, key = item.partition(":")
        role = role.strip()
        key = key.strip()
        if not sep or role not in ROLES:
            raise ValueError(f"{source} entry {number}: expected read:<key> or write:<key>")
        if len(key) < MIN_KEY_LENGTH:
            raise ValueError(f"{source} entry {number}: keys need {MIN_KEY_LENGTH}+ characters")
        entries.append((role, key))
    return entries


# libpq's query keys that hold secrets.
SECRET_QUERY_KEYS = frozenset({"password", "sslpassword"})


def masked_url(url: str) -> str:
    """DATABASE_URL as it may be shown: the password, in the authority or
    as libpq's `password=` or `sslpassword=` query keys, replaced by `***`."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        credentials, _, host = netloc.rpartition("@")
        netloc = f"{credentials.partition(':')[0]}:***@{host}"
    query = "&".join(
        f"{key}=***" if key in SECRET_QUERY_KEYS else f"{key}={value}" if sep else key
        for key, sep, value in (item.partition("=") for item in parts.query.split("&") if item)
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


class Settings(BaseModel, frozen=True, populate_by_name=True):
    host: str = Field("127.0.0.1", alias="HOST")
    # Listening beyond loopback without API keys is refused unless this says
    # the API is meant to be open to anyone who can reach it.
    allow_open_api: bool = Field(False, alias="ALLOW_OPEN_API")
    port: int = Field(8000, alias="PORT", ge=1, le=65535)
    # Processes serving the port together (SO_REUSEPORT), each with its own
    # pool of DB_POOL_MAX connections.
    workers: int = Field(1, alias="WORKERS", ge=1, le=64)
    # Seconds in-flight requests get to finish after SIGTERM.
    shutdown_grace: float = Field(30.0, alias="SHUTDOWN_GRACE", ge=0)
    # Unset means "start the embedded development PostgreSQL under .data/".
    database_url: str | None = Field(None, alias="DATABASE_URL")
    db_pool_min: int = Field(2, alias="DB_POOL_MIN", ge=0)
    db_pool_max: int = Field(10, alias="DB_POOL_MAX", ge=1)
    # Seconds to wait for a pooled connection and for one query: requests
    # fail fast with 503 instead of piling up behind a sick database.
    db_acquire_timeout: float = Field(5.0, alias="DB_ACQUIRE_TIMEOUT", gt=0)
    db_query_timeout: float = Field(10.0, alias="DB_QUERY_TIMEOUT", gt=0)
    # Off behind PgBouncer in transaction mode: prepared statements do not
    # survive a server connection change there.
    db_statement_cache: bool = Field(True, alias="DB_STATEMENT_CACHE")
    # Seconds a stream may use clip metadata read earlier (0 = always ask
    # PostgreSQL); see db/clip_cache.py.
    clip_cache_seconds: float = Field(5.0, alias="CLIP_CACHE_SECONDS", ge=0)
    # Seconds a rendered page of GET /clips may be answered again (0 = off);
    # see web/pages.py.
    list_cache_seconds: float = Field(1.0, alias="LIST_CACHE_SECONDS", ge=0)
    migrate_on_start: bool = Field(True, alias="MIGRATE_ON_START")
    media_dir: Path = Field(ROOT / "media", alias="MEDIA_DIR")
    # The read-through cache of remote clips (streaming/cache.py): where its
    # files live, and the bytes it may hold (0 turns it off: streams pipe).
    cache_dir: Path = Field(ROOT / "cache", alias="CACHE_DIR")
    cache_max_bytes: int = Field(1024 * 1024 * 1024, alias="CACHE_MAX_BYTES", ge=0)
    log_level: LogLevel = Field("INFO", alias="LOG_LEVEL")
    log_format: Literal["plain", "json"] = Field("plain", alias="LOG_FORMAT")
    # false: health checks and scrapes (/healthz, /readyz, /metrics), which
    # arrive every few seconds, get no access-log line; their metrics stay.
    access_log_probes: bool = Field(True, alias="ACCESS_LOG_PROBES")
    # Bearer token Prometheus must send to read /metrics; unset = open
    # (then keep /metrics on the internal network).
    metrics_token: str | None = Field(None, alias="METRICS_TOKEN", min_length=16, repr=False)
    metrics_max_clip_series: int = Field(500, alias="METRICS_MAX_CLIP_SERIES", ge=0)
    # Base of the absolute stream_url in clip bodies; unset means "derive it
    # from the request" (scheme and Host header).
    public_url: str | None = Field(None, alias="PUBLIC_URL")

    # Upstream audio origins.
    upstream_allow: CommaList = Field((), alias="UPSTREAM_ALLOW")
    upstream_connect_timeout: float = Field(3.0, alias="UPSTREAM_CONNECT_TIMEOUT", gt=0)
    upstream_headers_timeout: float = Field(10.0, alias="UPSTREAM_HEADERS_TIMEOUT", gt=0)
    upstream_read_timeout: float = Field(15.0, alias="UPSTREAM_READ_TIMEOUT", gt=0)
    # Bytes a proxied stream reads from its origin and writes on at a time.
    # Memory per slow listener grows with it (about 4x); throughput too.
    stream_buffer_bytes: int = Field(128 * 1024, alias="STREAM_BUFFER_BYTES", ge=16 * 1024)
    # Longest any stream may last, however the origin trickles or the
    # listener reads; a clip's own limit is shorter (below).
    stream_max_seconds: float = Field(1800.0, alias="STREAM_MAX_SECONDS", gt=0)
    # A stream of a clip lasts at most duration x factor + slack seconds
    # (and STREAM_MAX_SECONDS): enough for a slow listener, not for one who
    # trickles on purpose to hold an origin connection.
    stream_duration_factor: float = Field(3.0, alias="STREAM_DURATION_FACTOR", ge=1)
    stream_duration_slack: float = Field(60.0, alias="STREAM_DURATION_SLACK", ge=0)
    # Seconds a listener may take to accept one write (up to
    # STREAM_BUFFER_BYTES, or a piece of a stored file) before it is dropped
    # and its origin connection freed.
    stream_send_timeout: float = Field(30.0, alias="STREAM_SEND_TIMEOUT", gt=0)
    upstream_max_redirects: int = Field(3, alias="UPSTREAM_MAX_REDIRECTS", ge=0, le=10)
    upstream_max_connections: int = Field(2048, alias="UPSTREAM_MAX_CONNECTIONS", ge=1)
    # A PEM file of CA certificates trusted for HTTPS origins besides the
    # system store (origins behind a private CA); unset = the system store only.
    upstream_ca_bundle: Path | None = Field(None, alias="UPSTREAM_CA_BUNDLE")
    # Repeat plays of one clip by one listener (address + User-Agent) within
    # this many seconds count once; 0 counts every listen (streaming/dedup.py).
    play_dedup_seconds: float = Field(0.0, alias="PLAY_DEDUP_SECONDS", ge=0)
    # Reverse proxies whose X-Forwarded-For is believed (addresses or networks).
    trusted_proxies: CommaList = Field((), alias="TRUSTED_PROXIES")
    # "proxy" pipes remote audio through the app; "redirect" counts the play
    # and answers 302 to the clip's audio_url, so the bytes bypass the app.
    stream_mode: Literal["proxy", "redirect"] = Field("proxy", alias="STREAM_MODE")

    # Access control (web/auth.py). No keys: the API is open.
    api_keys: str | None = Field(None, alias="API_KEYS", repr=False)
    api_keys_file: Path | None = Field(None, alias="API_KEYS_FILE")
    # Comma-separated; the first signs stream URLs, all verify (rotation).
    stream_url_secret: CommaList = Field((), alias="STREAM_URL_SECRET", repr=False)
    stream_url_ttl: int = Field(21600, alias="STREAM_URL_TTL", ge=60)
    cors_origins: CommaList = Field((), alias="CORS_ORIGINS")
    max_upload_bytes: int = Field(50 * 1024 * 1024, alias="MAX_UPLOAD_BYTES", ge=1024)
    # Seconds an upload may take to deliver each 64 KiB of its body, and a
    # JSON body (64 KiB at most) the whole of it (408).
    upload_idle_seconds: float = Field(30.0, alias="UPLOAD_IDLE_SECONDS", gt=0)
    # Seconds a whole upload body may take (408): a pace just above the idle
    # limit must not hold an UPLOAD_MAX_CONCURRENT slot for hours.
    upload_max_seconds: float = Field(600.0, alias="UPLOAD_MAX_SECONDS", gt=0)
    # Uploads one process receives at once; more are 503 with Retry-After.
    upload_max_concurrent: int = Field(32, alias="UPLOAD_MAX_CONCURRENT", ge=1)
    # Processes (per server process) that read uploaded audio, and the
    # seconds one file may take there (422, and the process is replaced).
    upload_parse_workers: int = Field(2, alias="UPLOAD_PARSE_WORKERS", ge=1, le=64)
    upload_parse_seconds: float = Field(10.0, alias="UPLOAD_PARSE_SECONDS", gt=0)
    # Bytes MEDIA_DIR's disk keeps free: an upload that would go below is 507.
    media_min_free_bytes: int = Field(256 * 1024 * 1024, alias="MEDIA_MIN_FREE_BYTES", ge=0)

    # Previews and peaks, made by jobs in PostgreSQL (jobs/). Processes (per
    # server process) running them; 0: this process runs none (an API-only
    # replica), others do.
    job_workers: int = Field(1, alias="JOB_WORKERS", ge=0, le=64)
    # Seconds a claimed job stays claimed without renewal (renewed every
    # third of it): a process killed mid-job has it claimed again after this.
    job_lease_seconds: float = Field(30.0, alias="JOB_LEASE_SECONDS", ge=1)
    # Seconds an idle runner waits before asking for due jobs again (a job
    # queued by this process starts at once).
    job_poll_seconds: float = Field(2.0, alias="JOB_POLL_SECONDS", gt=0)
    # Attempts before a job fails for good; the n-th retry waits
    # JOB_RETRY_SECONDS x 2^(n-1).
    job_max_attempts: int = Field(3, alias="JOB_MAX_ATTEMPTS", ge=1, le=20)
    job_retry_seconds: float = Field(10.0, alias="JOB_RETRY_SECONDS", ge=0)
    # Time one job may take in its process; past it the process is killed.
    job_timeout_seconds: float = Field(300.0, alias="JOB_TIMEOUT_SECONDS", gt=0)
    # MP3 previews' constant bitrate, kbit/s (one of LAME's: PREVIEW_BITRATES).
    preview_bitrate: int = Field(128, alias="PREVIEW_BITRATE")

    @field_validator("preview_bitrate")
    @classmethod
    def _mp3_bitrate(cls, value: int) -> int:
        if value not in PREVIEW_BITRATES:
            raise ValueError(f"must be one of {', '.join(map(str, PREVIEW_BITRATES))} (kbit/s)")
        return value

    # Where uploaded audio lives: "local" (MEDIA_DIR) or "s3" (a bucket;
    # MEDIA_DIR then holds only uploads being received). storage/s3.py.
    media_store: Literal["local", "s3"] = Field("local", alias="MEDIA_STORE")
    s3_bucket: str | None = Field(None, alias="S3_BUCKET")
    # Unset: AWS S3 itself; else an S3-compatible store (MinIO, R2, GCS).
    s3_endpoint_url: str | None = Field(None, alias="S3_ENDPOINT_URL")
    s3_region: str = Field("us-east-1", alias="S3_REGION")
    # Prepended to every object's name ("clips/" keeps them in one folder).
    s3_prefix: str = Field("", alias="S3_PREFIX")
    aws_access_key_id: str | None = Field(None, alias="AWS_ACCESS_KEY_ID", repr=False)
    aws_secret_access_key: str | None = Field(None, alias="AWS_SECRET_ACCESS_KEY", repr=False)
    aws_session_token: str | None = Field(None, alias="AWS_SESSION_TOKEN", repr=False)

    @field_validator("database_url")
    @classmethod
    def _postgresql_url(cls, value: str | None) -> str | None:
        # Both drivers (asyncpg, and psycopg under yoyo) need this scheme;
        # name only the scheme: the rest may hold a password.
        if value is None:
            return None
        scheme, separator, _ = value.partition("://")
        if not separator:
            raise ValueError("must be a postgresql:// URL")
        if scheme not in ("postgresql", "postgres"):
            raise ValueError(f"must start with postgresql://, not {scheme[:20]}://")
        try:
            port = urlsplit(value).port  # raises for a port not a number or past 65535
        except ValueError:
            raise ValueError("has a malformed host or port") from None
        if port == 0:
            raise ValueError("has a malformed host or port")
        return value

    @field_validator("s3_endpoint_url")
    @classmethod
    def _endpoint_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL")
        # Presigned URLs are built on it and handed to players in redirect
        # mode: credentials in it would go to every listener (and aiohttp
        # would send them as Basic auth in place of the request's signature).
        if "@" in parts.netloc or parts.query or parts.fragment:
            raise ValueError(
                "must be a plain URL, without credentials (those go in"
                " AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), query or fragment"
            )
        return value

    @model_validator(mode="after")
    def _bucket_is_named(self) -> "Settings":
        if self.media_store == "s3":
            missing = [
                name
                for name, value in (
                    ("S3_BUCKET", self.s3_bucket),
                    ("AWS_ACCESS_KEY_ID", self.aws_access_key_id),
                    ("AWS_SECRET_ACCESS_KEY", self.aws_secret_access_key),
                )
                if not value
            ]
            if missing:
                raise ValueError(f"MEDIA_STORE=s3 needs {', '.join(missing)}")
        return self

    # (role, key) pairs from API_KEYS and API_KEYS_FILE, read once when the
    # settings are validated.
    _api_key_entries: tuple[tuple[str, str], ...] = PrivateAttr(())

    def __repr_args__(self):  # repr() and str(): secrets stay out (see masked_url)
        for name, value in super().__repr_args__():
            yield name, masked_url(value) if name == "database_url" and value else value

    def changed(self, updates: dict[str, object]) -> "Settings":
        """A copy with `updates` (by field name), validated again as a whole:
        unlike model_copy(update=...), every check and derived value holds.
        The API keys already read are kept unless the updates change them:
        the keys file is read once."""
        keys_kept = not {"api_keys", "api_keys_file"} & set(updates)
        context = {KEYS_READ: self._api_key_entries} if keys_kept else None
        return Settings.model_validate({**self.model_dump(), **updates}, context=context)

    def api_key_entries(self) -> tuple[tuple[str, str], ...]:
        """(role, key) pairs from API_KEYS and API_KEYS_FILE."""
        return self._api_key_entries

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry[:60]!r} is not an address or network") from None
        return value

    @field_validator("upstream_ca_bundle")
    @classmethod
    def _loadable_bundle(cls, value: Path | None) -> Path | None:
        # Checked at start-up, not at the first HTTPS stream: a wrong path
        # would otherwise surface as every private origin failing TLS.
        if value is not None:
            upstream_ssl_context(value)
        return value

    @model_validator(mode="after")
    def _keys_are_usable(self, info: ValidationInfo) -> "Settings":
        entries = (info.context or {}).get(KEYS_READ)
        if entries is None:
            entries = parse_keys(self.api_keys or "", "API_KEYS")
            if self.api_keys_file is not None:
                try:
                    text = self.api_keys_file.read_text()
                except OSError as error:
                    raise ValueError(f"API_KEYS_FILE: cannot read it ({error.strerror})") from None
                entries += parse_keys(text, "API_KEYS_FILE")
        self._api_key_entries = tuple(entries)
        if entries and not self.stream_url_secret:
            raise ValueError(
                "STREAM_URL_SECRET is required with API keys: it signs the stream URLs"
                " that let <audio> play without a key"
            )
        if any(len(secret) < 16 for secret in self.stream_url_secret):
            raise ValueError("STREAM_URL_SECRET: each secret needs 16+ characters")
        if not entries and not self.listens_on_loopback() and not self.allow_open_api:
            raise ValueError(
                f"HOST={self.host} is reachable from other machines and API_KEYS is not set:"
                " set API_KEYS and STREAM_URL_SECRET (and METRICS_TOKEN), or ALLOW_OPEN_API=true"
                " if anyone who can reach it may use the API"
            )
        return self

    def listens_on_loopback(self) -> bool:
        """Whether HOST is reachable from this machine only."""
        if self.host.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host.strip("[]")).is_loopback
        except ValueError:
            return False  # a name: it may resolve anywhere


def upstream_ssl_context(bundle: Path | None) -> ssl.SSLContext:
    """The TLS context for origins: the system's trusted CAs, plus those in
    the PEM file `bundle` (UPSTREAM_CA_BUNDLE) when given. Raises
    ValueError naming what is wrong with the file (unreadable, or no PEM
    certificate in it)."""
    context = ssl.create_default_context()
    if bundle is not None:
        try:
            context.load_verify_locations(cafile=bundle)
        except ssl.SSLError:  # an OSError too: first
            raise ValueError(f"{bundle} holds no PEM CA certificate") from None
        except OSError as error:
            raise ValueError(f"cannot read {bundle} ({error.strerror})") from None
    return context


SETTINGS = web.AppKey("SETTINGS", Settings)


def load_settings() -> Settings:
    """Read settings from the environment (and `.env`, which fills gaps only).

    An invalid value stops the process with one line per problem naming the
    variable, never a traceback.
    """
    load_dotenv()
    # An empty variable (`METRICS_TOKEN=` in .env) means "use the default".
    given = {name: value for name, value in os.environ.items() if value != ""}
    try:
        return Settings.model_validate(given)
    except ValidationError as error:
        # Only the variable and the reason: values may be secrets.
        lines = [
            f"invalid setting {'.'.join(str(p) for p in e['loc']) or 'combination'}: {e['msg']}"
            for e in error.errors(include_input=False)
        ]
        raise SystemExit("\n".join(lines)) from None
