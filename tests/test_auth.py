"""Identity without a network: the token file (parsing, constant-time lookup, re-reading on
change, a bad edit keeping the last good tokens), bearer headers, client-certificate names and
the rule that no authentication is served only on loopback."""

from __future__ import annotations

import logging
import os

import pytest

from memscore.auth import (
    DEFAULT_TENANT,
    Authenticator,
    TokenFile,
    TokenFileError,
    authenticator_from_settings,
    is_loopback,
    parse_token_file,
    token_digest,
)
from memscore.errors import Unauthenticated


def _write(path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n")
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a change even within one tick


def test_token_file_lines_comments_and_errors_that_name_the_line_only():
    text = f"# ops\n\nteam-a {token_digest('ta')}\nteam-b {token_digest('tb').upper()}  # upper hex is fine\n"
    assert parse_token_file(text) == [("team-a", token_digest("ta")), ("team-b", token_digest("tb"))]
    for bad in ("team-a", f"team a {token_digest('x')}", "team-a deadbeef", f"-x {token_digest('x')}"):
        with pytest.raises(TokenFileError, match="line 2") as e:
            parse_token_file(f"# ok\n{bad}\n", "tokens")
        assert token_digest("x") not in str(e.value)


def test_a_token_file_is_re_read_when_it_changes_and_a_bad_edit_keeps_the_last_good(tmp_path):
    path = tmp_path / "tokens"
    _write(path, [f"team-a {token_digest('one')}"])
    tokens = TokenFile(str(path))
    assert tokens.tenant_for("one") == "team-a" and tokens.tenant_for("two") is None
    _write(path, [f"team-b {token_digest('two')}"])  # rotated: "one" revoked
    assert tokens.tenant_for("one") is None and tokens.tenant_for("two") == "team-b"
    _write(path, ["garbage"])
    assert tokens.tenant_for("two") == "team-b"
    path.unlink()
    assert tokens.tenant_for("two") == "team-b"


def test_an_unreadable_token_file_stops_the_server_from_starting(tmp_path):
    with pytest.raises(TokenFileError, match="cannot read"):
        TokenFile(str(tmp_path / "absent"))


def test_bearer_headers_and_client_certificate_names(tmp_path):
    path = tmp_path / "tokens"
    _write(path, [f"team-a {token_digest('secret-a')}"])
    auth = Authenticator(tokens=TokenFile(str(path)))
    assert auth.tenant([("authorization", "Bearer secret-a")]) == "team-a"
    assert auth.tenant([("x-other", "1"), ("authorization", "bearer  secret-a ")]) == "team-a"
    for metadata in ([], [("authorization", "Bearer")], [("authorization", "Basic secret-a")],
                     [("authorization", "Bearer secret-b")], [("authorization", "Bearer " + "x" * 5000)]):  # fmt: skip
        with pytest.raises(Unauthenticated) as e:
            auth.tenant(metadata)
        assert "secret" not in str(e.value)
    certs = Authenticator(client_certs=True)
    assert certs.tenant([], {"x509_common_name": [b"team-c"]}) == "team-c"
    with pytest.raises(Unauthenticated, match="common name"):
        certs.tenant([], {"x509_common_name": [b"team c/../"]})
    with pytest.raises(Unauthenticated, match="certificates, not tokens"):
        certs.tenant([("authorization", "Bearer secret-a")], {})
    assert Authenticator().tenant([("authorization", "Bearer anything")]) == DEFAULT_TENANT


@pytest.mark.parametrize(
    "host,loopback",
    [("127.0.0.1", True), ("127.1.2.3", True), ("localhost", True), ("::1", True), ("[::1]", True),
     ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("gateway", False), ("", False)],
)  # fmt: skip
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


def test_no_authentication_is_served_only_on_loopback_or_on_purpose(make_settings, tmp_path):
    assert authenticator_from_settings(make_settings(), "127.0.0.1").anonymous
    with pytest.raises(RuntimeError, match="MEMSCORE_AUTH_TOKENS"):
        authenticator_from_settings(make_settings(), "0.0.0.0")
    assert authenticator_from_settings(make_settings(allow_unauthenticated=True), "0.0.0.0").anonymous
    path = tmp_path / "tokens"
    _write(path, [f"team-a {token_digest('t')}"])
    assert not authenticator_from_settings(make_settings(auth_tokens=str(path)), "0.0.0.0").anonymous


def test_memscore_up_refuses_a_public_address_without_tokens(clean_env, tmp_path, capsys):
    from memscore.cli import main

    clean_env.setenv("MEMSCORE_HOME", str(tmp_path / "home"))  # `up` sets it: restored after the test
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level  # `up` configures logging: restored too
    try:
        assert main(["up", "--bind", "0.0.0.0", "--home", str(tmp_path / "home"), "--gateway-port", "0"]) == 2
    finally:
        root.handlers[:], root.level = handlers, level
    assert "refusing to serve without authentication" in capsys.readouterr().err
