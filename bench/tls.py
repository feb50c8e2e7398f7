"""A certificate authority made for one run, and a certificate it signs for
127.0.0.1 and localhost: what the HTTPS origin serves and what the app is
told to trust (UPSTREAM_CA_BUNDLE). Made with the openssl command, in the
run's temporary directory, deleted with it."""

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# P-256 keys: what CDNs mostly serve today, and a cheap handshake.
KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
SERVER_EXTENSIONS = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


class TLSUnavailable(RuntimeError):
    pass


@dataclass(frozen=True)
class Certificates:
    ca_bundle: Path  # PEM, the CA's certificate
    server_cert: Path
    server_key: Path


def make(directory: Path) -> Certificates:
    """A throwaway CA and a server certificate signed by it, valid two days.
    Raises TLSUnavailable when openssl is missing or fails."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise TLSUnavailable("openssl is not installed")
    directory.mkdir(parents=True)
    ca_key, ca_cert = directory / "ca.key", directory / "ca.pem"
    key, request, cert = (
        directory / "server.key",
        directory / "server.csr",
        directory / "server.pem",
    )
    extensions = directory / "server.ext"
    extensions.write_text(SERVER_EXTENSIONS)
    steps = [
        [openssl, "req", "-x509", *KEY, "-keyout", ca_key, "-out", ca_cert, "-days", "2",
         "-subj", "/CN=Soundverse bench CA (one run)",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        [openssl, "req", *KEY, "-keyout", key, "-out", request, "-subj", "/CN=127.0.0.1"],
        [openssl, "x509", "-req", "-in", request, "-CA", ca_cert, "-CAkey", ca_key,
         "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", extensions],
    ]  # fmt: skip
    for argv in steps:
        try:
            subprocess.run([str(a) for a in argv], check=True, capture_output=True)
        except subprocess.CalledProcessError as error:
            raise TLSUnavailable(f"openssl failed: {error.stderr.decode()[-500:]}") from None
    return Certificates(ca_bundle=ca_cert, server_cert=cert, server_key=key)
