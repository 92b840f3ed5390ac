"""TLS for both gRPC servers: the certificate and key named by MEMSCORE_TLS_CERT/KEY (and the
client CA of MEMSCORE_TLS_CLIENT_CA for mTLS), re-read when a file changes so a renewed
certificate (cert-manager, a rotated Secret) takes effect at the next handshake, no restart.
A renewed pair that does not load (a half-written file, a key of another certificate) is
logged and the previous one kept."""

from __future__ import annotations

import logging
import os
import ssl

import grpc

log = logging.getLogger("memscore.tls")


def _stamps(paths: list[str]) -> tuple:
    out = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


def _load(cert: str, key: str, client_ca: str) -> grpc.ServerCertificateConfiguration:
    """The configuration from the files, checked first: the key must belong to the certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)  # ssl.SSLError / OSError when they do not load or match
    if client_ca:
        ctx.load_verify_locations(client_ca)
    with open(cert, "rb") as f:
        cert_pem = f.read()
    with open(key, "rb") as f:
        key_pem = f.read()
    ca_pem = None
    if client_ca:
        with open(client_ca, "rb") as f:
            ca_pem = f.read()
    return grpc.ssl_server_certificate_configuration([(key_pem, cert_pem)], root_certificates=ca_pem)


def server_credentials(cert: str, key: str, client_ca: str = "") -> grpc.ServerCredentials | None:
    """Credentials that re-read the files on change, or None for plaintext (no cert and key)."""
    if not cert and not key:
        if client_ca:
            raise RuntimeError("MEMSCORE_TLS_CLIENT_CA needs TLS: set MEMSCORE_TLS_CERT and MEMSCORE_TLS_KEY too")
        return None
    if not (cert and key):
        raise RuntimeError("TLS needs both MEMSCORE_TLS_CERT and MEMSCORE_TLS_KEY")
    paths = [cert, key, *([client_ca] if client_ca else [])]
    try:
        initial = _load(cert, key, client_ca)
    except (OSError, ssl.SSLError) as e:
        raise RuntimeError(f"cannot load the TLS certificate {cert} and key {key}: {e}") from None
    state = {"stamps": _stamps(paths)}

    def fetch() -> grpc.ServerCertificateConfiguration | None:  # called at every new handshake
        stamps = _stamps(paths)
        if stamps == state["stamps"]:
            return None
        try:
            config = _load(cert, key, client_ca)
        except (OSError, ssl.SSLError) as e:
            log.error("TLS files changed but do not load (%s); keeping the previous certificate", e)
            return None
        state["stamps"] = stamps
        log.info("TLS certificate re-read from %s", cert)
        return config

    return grpc.dynamic_ssl_server_credentials(initial, fetch, require_client_authentication=bool(client_ca))


def channel_credentials(ca: str = "", client_cert: str = "", client_key: str = "") -> grpc.ChannelCredentials | None:
    """Client side: TLS credentials when a CA or a client certificate is given, else None."""
    if not (ca or client_cert or client_key):
        return None
    if bool(client_cert) != bool(client_key):
        raise ValueError("a client certificate needs its key (and the key its certificate)")

    def read(p: str) -> bytes | None:
        if not p:
            return None
        with open(p, "rb") as f:
            return f.read()

    return grpc.ssl_channel_credentials(
        root_certificates=read(ca), private_key=read(client_key), certificate_chain=read(client_cert)
    )
