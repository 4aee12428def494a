"""Keys fetched from a jwks_url (a real HTTP server on loopback): caching, rotation, rate limit, jku."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import requests

from cds_service.protocol import clients as clients_module
from cds_service.protocol.auth import Authenticator, AuthError
from cds_service.protocol.clients import ClientKeys, load_clients
from tests.auth.auth_support import SIGN_PATH, JwksServer, Signer, ec_p384_key, rsa_key, write_clients
from tests.support.processes import free_port


class Clock:
    """A hand-moved monotonic clock, so cache lifetimes can be crossed without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def bearer(token: str) -> str:
    return f"Bearer {token}"


def client_keys(tmp_path: Path, jwks_url: str, clock: Clock) -> ClientKeys:
    path = write_clients(tmp_path, [{"iss": "https://ehr.example.org", "jwks_url": jwks_url}], "keys.json")
    client = load_clients(path)["https://ehr.example.org"]
    return ClientKeys(client, requests.Session(), clock=clock)


def test_keys_are_fetched_from_jwks_url_and_cached(
    make_authenticator, jwks_server: JwksServer, rsa_signer: Signer
) -> None:
    url = jwks_server.publish("/jwks.json", rsa_signer)
    authenticator: Authenticator = make_authenticator([{"iss": rsa_signer.iss, "jwks_url": url}])
    assert jwks_server.total_hits() == 0, "keys are fetched lazily, not at start"
    for _ in range(5):
        assert authenticator.authenticate(bearer(rsa_signer.token()), SIGN_PATH).iss == rsa_signer.iss
    assert jwks_server.hits["/jwks.json"] == 1


def test_unknown_kid_triggers_one_refresh_then_is_rate_limited(
    make_authenticator, jwks_server: JwksServer, rsa_signer: Signer
) -> None:
    url = jwks_server.publish("/jwks.json", rsa_signer)
    authenticator: Authenticator = make_authenticator([{"iss": rsa_signer.iss, "jwks_url": url}])
    authenticator.authenticate(bearer(rsa_signer.token()), SIGN_PATH)
    assert jwks_server.hits["/jwks.json"] == 1
    for attempt in range(20):
        token = rsa_signer.token(headers={"kid": f"random-{attempt}"})
        with pytest.raises(AuthError, match="is not a known key"):
            authenticator.authenticate(bearer(token), SIGN_PATH)
    # The first fetch was moments ago, so no unknown kid may trigger another one yet.
    assert jwks_server.hits["/jwks.json"] == 1


def test_unknown_kid_on_a_fresh_authenticator_fetches_once(
    make_authenticator, jwks_server: JwksServer, rsa_signer: Signer
) -> None:
    url = jwks_server.publish("/jwks.json", rsa_signer)
    authenticator: Authenticator = make_authenticator([{"iss": rsa_signer.iss, "jwks_url": url}])
    for _ in range(3):
        with pytest.raises(AuthError, match="'nope' is not a known key"):
            authenticator.authenticate(bearer(rsa_signer.token(headers={"kid": "nope"})), SIGN_PATH)
    assert jwks_server.hits["/jwks.json"] == 1


def test_rotation_is_picked_up_on_unknown_kid_after_the_interval(
    tmp_path: Path, jwks_server: JwksServer, rsa_signer: Signer
) -> None:
    clock = Clock()
    url = jwks_server.publish("/jwks.json", rsa_signer)
    keys = client_keys(tmp_path, url, clock)
    assert keys.find(rsa_signer.kid) is not None
    rotated = Signer(iss=rsa_signer.iss, kid="ec-new", alg="ES384", private_key=ec_p384_key())
    jwks_server.publish("/jwks.json", rsa_signer, rotated)

    clock.now += clients_module.REFRESH_INTERVAL_S / 2
    assert keys.find("ec-new") is None, "refresh is rate-limited"
    assert jwks_server.hits["/jwks.json"] == 1

    clock.now += clients_module.REFRESH_INTERVAL_S
    assert keys.find("ec-new") is not None
    assert jwks_server.hits["/jwks.json"] == 2
    assert keys.find(rsa_signer.kid) is not None
    assert jwks_server.hits["/jwks.json"] == 2


def test_cache_lifetime_expires(tmp_path: Path, jwks_server: JwksServer, rsa_signer: Signer) -> None:
    clock = Clock()
    keys = client_keys(tmp_path, jwks_server.publish("/jwks.json", rsa_signer), clock)
    keys.find(rsa_signer.kid)
    clock.now += clients_module.KEYS_LIFETIME_S - 1
    keys.find(rsa_signer.kid)
    assert jwks_server.hits["/jwks.json"] == 1
    clock.now += 2
    keys.find(rsa_signer.kid)
    assert jwks_server.hits["/jwks.json"] == 2


def test_removed_key_stops_working_after_refresh(
    tmp_path: Path, jwks_server: JwksServer, rsa_signer: Signer
) -> None:
    clock = Clock()
    keys = client_keys(tmp_path, jwks_server.publish("/jwks.json", rsa_signer), clock)
    assert keys.find(rsa_signer.kid) is not None
    jwks_server.documents["/jwks.json"] = {"keys": []}
    clock.now += clients_module.KEYS_LIFETIME_S
    assert keys.find(rsa_signer.kid) is None


def test_fetch_failure_keeps_cached_keys_and_is_rate_limited(
    tmp_path: Path, jwks_server: JwksServer, rsa_signer: Signer
) -> None:
    clock = Clock()
    keys = client_keys(tmp_path, jwks_server.publish("/jwks.json", rsa_signer), clock)
    keys.find(rsa_signer.kid)
    del jwks_server.documents["/jwks.json"]  # now answers 404
    clock.now += clients_module.KEYS_LIFETIME_S
    assert keys.find(rsa_signer.kid) is not None, "stale keys are kept when the refresh fails"
    assert jwks_server.hits["/jwks.json"] == 2
    for _ in range(5):
        keys.find(rsa_signer.kid)
    assert jwks_server.hits["/jwks.json"] == 2, "a failing URL is not retried on every call"


def test_bad_keys_in_a_fetched_set_are_skipped(
    tmp_path: Path, jwks_server: JwksServer, rsa_signer: Signer
) -> None:
    jwks_server.documents["/jwks.json"] = {
        "keys": [
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "broken", "n": "AQAB", "e": "AQAB"},
            rsa_signer.public_jwk(),
        ]
    }
    keys = client_keys(tmp_path, jwks_server.url("/jwks.json"), Clock())
    assert keys.find("hmac") is None
    assert keys.find("broken") is None
    assert keys.find(rsa_signer.kid) is not None


def test_unlisted_jku_is_never_contacted(
    make_authenticator, jwks_server: JwksServer, ec_signer: Signer, rsa_signer: Signer
) -> None:
    attacker_url = jwks_server.publish("/attacker.json", ec_signer)
    registered = jwks_server.publish("/registered.json", rsa_signer)
    authenticator: Authenticator = make_authenticator(
        [
            {"iss": ec_signer.iss, "jwks": {"keys": [ec_signer.public_jwk()]}},
            {"iss": rsa_signer.iss, "jwks_url": registered},
        ]
    )
    token = rsa_signer.token(headers={"jku": attacker_url})
    with pytest.raises(AuthError, match="is not the jwks_url registered"):
        authenticator.authenticate(bearer(token), SIGN_PATH)
    # A client registered with inline keys only is verified with those keys; its jku is not looked at.
    inline = authenticator.authenticate(bearer(ec_signer.token(headers={"jku": attacker_url})), SIGN_PATH)
    assert inline.iss == ec_signer.iss
    assert jwks_server.hits["/attacker.json"] == 0
    assert jwks_server.total_hits() == 0


def test_jku_equal_to_the_registered_url_is_honoured(
    make_authenticator, jwks_server: JwksServer, rsa_signer: Signer
) -> None:
    url = jwks_server.publish("/registered.json", rsa_signer)
    authenticator: Authenticator = make_authenticator([{"iss": rsa_signer.iss, "jwks_url": url}])
    client = authenticator.authenticate(bearer(rsa_signer.token(headers={"jku": url})), SIGN_PATH)
    assert client.iss == rsa_signer.iss
    assert jwks_server.hits == {"/registered.json": 1}


def test_unreachable_jwks_url_refuses_with_a_reason(make_authenticator, rsa_signer: Signer) -> None:
    port = free_port()
    authenticator: Authenticator = make_authenticator(
        [{"iss": rsa_signer.iss, "jwks_url": f"http://127.0.0.1:{port}/jwks.json"}]
    )
    with pytest.raises(AuthError, match="is not a known key"):
        authenticator.authenticate(bearer(rsa_signer.token()), SIGN_PATH)


def test_the_sandbox_registered_with_its_key_inline_only_passes_with_its_jku(
    make_authenticator, jwks_server: JwksServer, ec_signer: Signer, other_ec_key
) -> None:
    """The Sandbox sends a jku on every call; a site without internet registers its key inline only.
    The jku is not fetched, and only the inline key verifies: an impostor naming a jku it serves fails."""
    sandbox_jku = jwks_server.url("/.well-known/jwks.json")
    impostor = ec_signer.with_key(other_ec_key)
    jwks_server.publish("/.well-known/jwks.json", impostor)
    authenticator: Authenticator = make_authenticator(
        [{"iss": ec_signer.iss, "jwks": {"keys": [ec_signer.public_jwk()]}}]
    )
    token = ec_signer.token(headers={"jku": sandbox_jku})
    assert authenticator.authenticate(bearer(token), SIGN_PATH).iss == ec_signer.iss
    with pytest.raises(AuthError, match="signature does not verify"):
        authenticator.authenticate(bearer(impostor.token(headers={"jku": sandbox_jku})), SIGN_PATH)
    assert jwks_server.total_hits() == 0


def test_a_jku_equal_to_the_registered_url_as_a_url_is_honoured(
    make_authenticator, jwks_server: JwksServer, rsa_signer: Signer
) -> None:
    """Scheme and host case and the default port do not make another URL; the registered one is fetched."""
    url = jwks_server.publish("/registered.json", rsa_signer)
    authenticator: Authenticator = make_authenticator([{"iss": rsa_signer.iss, "jwks_url": url}])
    shouted = url.replace("http://", "HTTP://").replace("/registered.json", "/registered.json/")
    client = authenticator.authenticate(bearer(rsa_signer.token(headers={"jku": shouted})), SIGN_PATH)
    assert client.iss == rsa_signer.iss
    assert jwks_server.hits == {"/registered.json": 1}
    for other in (url.replace("/registered.json", "/Registered.json"), url + "?v=2", url + "#k"):
        with pytest.raises(AuthError, match="is not the jwks_url registered"):
            authenticator.authenticate(bearer(rsa_signer.token(headers={"jku": other})), SIGN_PATH)
    assert jwks_server.hits == {"/registered.json": 1}


@pytest.mark.parametrize("jku", [["https://ehr.example.org/jwks"], 42, {"url": "x"}])
def test_a_jku_that_is_not_a_string_is_refused(make_authenticator, ec_signer: Signer, jku: object) -> None:
    authenticator: Authenticator = make_authenticator(
        [{"iss": ec_signer.iss, "jwks": {"keys": [ec_signer.public_jwk()]}}]
    )
    with pytest.raises(AuthError, match="is not a URL"):
        authenticator.authenticate(bearer(ec_signer.token(headers={"jku": jku})), SIGN_PATH)


def test_a_key_listed_once_per_alg_under_one_kid_verifies_each_alg(
    tmp_path: Path, jwks_server: JwksServer, rsa_signer: Signer
) -> None:
    """Some sets repeat a key for each algorithm it may sign with, keeping the kid: the first entry
    (RS256 here) must not hide the others, or every RS384 token fails 'alg does not match key'."""
    entries = []
    for alg in ("RS256", "RS384"):
        jwk = rsa_signer.public_jwk()
        jwk["alg"] = alg
        entries.append(jwk)
    jwks_server.documents["/jwks.json"] = {"keys": entries}
    keys = client_keys(tmp_path, jwks_server.url("/jwks.json"), Clock())
    key = keys.find(rsa_signer.kid)
    assert key is not None
    assert set(key.by_algorithm) == {"RS256", "RS384"}


def test_two_keys_under_one_kid_the_first_one_verifies_an_alg_both_offer(
    make_authenticator, jwks_server: JwksServer, rsa_signer: Signer
) -> None:
    """Two different RSA keys under one kid: the first listed verifies; the second cannot take over."""
    stranger = Signer(iss=rsa_signer.iss, kid=rsa_signer.kid, alg="RS384", private_key=rsa_key())
    url = jwks_server.publish("/jwks.json", rsa_signer, stranger)
    authenticator: Authenticator = make_authenticator([{"iss": rsa_signer.iss, "jwks_url": url}])
    assert authenticator.authenticate(bearer(rsa_signer.token()), SIGN_PATH).iss == rsa_signer.iss
    with pytest.raises(AuthError, match="signature does not verify"):
        authenticator.authenticate(bearer(stranger.token()), SIGN_PATH)


def test_each_kid_of_a_set_verifies_only_with_its_own_key(
    make_authenticator, jwks_server: JwksServer, rsa_signer: Signer, ec_signer: Signer
) -> None:
    """A set with an RSA and an EC key: each token verifies with the key its kid names, and a token
    signed with one key but naming the other's kid fails, whatever alg it claims."""
    ec_of_ehr = Signer(iss=rsa_signer.iss, kid=ec_signer.kid, alg="ES384", private_key=ec_signer.private_key)
    url = jwks_server.publish("/jwks.json", rsa_signer, ec_of_ehr)
    authenticator: Authenticator = make_authenticator([{"iss": rsa_signer.iss, "jwks_url": url}])
    for signer in (rsa_signer, ec_of_ehr):
        assert authenticator.authenticate(bearer(signer.token()), SIGN_PATH).iss == rsa_signer.iss
    crossed = Signer(iss=rsa_signer.iss, kid=rsa_signer.kid, alg="ES384", private_key=ec_signer.private_key)
    with pytest.raises(AuthError, match="does not match key"):
        authenticator.authenticate(bearer(crossed.token()), SIGN_PATH)
    other_rsa = Signer(iss=rsa_signer.iss, kid=rsa_signer.kid, alg="RS384", private_key=rsa_key())
    with pytest.raises(AuthError, match="signature does not verify"):
        authenticator.authenticate(bearer(other_rsa.token()), SIGN_PATH)
    assert jwks_server.hits["/jwks.json"] == 1


def test_an_unknown_kid_is_logged_with_where_the_keys_come_from(
    make_authenticator, jwks_server: JwksServer, rsa_signer: Signer, ec_signer: Signer
) -> None:
    """A rotation not picked up yet must read as such in the log: fetched when, refetched how often, or
    the fetch failing, or keys that are inline only."""
    url = jwks_server.publish("/jwks.json", rsa_signer)
    missing = jwks_server.url("/missing.json")
    authenticator: Authenticator = make_authenticator(
        [
            {"iss": rsa_signer.iss, "jwks_url": url},
            {"iss": ec_signer.iss, "jwks": {"keys": [ec_signer.public_jwk()]}},
            {"iss": "https://down.example.org", "jwks_url": missing},
        ]
    )
    authenticator.authenticate(bearer(rsa_signer.token()), SIGN_PATH)
    with pytest.raises(
        AuthError, match=rf"its JWK Set from {re.escape(url)} was fetched \d+ s ago; it is fetched again"
    ):
        authenticator.authenticate(bearer(rsa_signer.token(headers={"kid": "rotated-in"})), SIGN_PATH)
    with pytest.raises(AuthError, match="its keys are given inline only: add the new key"):
        authenticator.authenticate(bearer(ec_signer.token(headers={"kid": "rotated-in"})), SIGN_PATH)
    down = Signer(iss="https://down.example.org", kid="k", alg="ES384", private_key=ec_signer.private_key)
    with pytest.raises(AuthError, match=f"its JWK Set could not be fetched from {re.escape(missing)}"):
        authenticator.authenticate(bearer(down.token()), SIGN_PATH)


def test_a_failed_refetch_is_named_while_the_old_keys_serve(
    tmp_path: Path, jwks_server: JwksServer, rsa_signer: Signer
) -> None:
    clock = Clock()
    keys = client_keys(tmp_path, jwks_server.publish("/jwks.json", rsa_signer), clock)
    assert keys.find(rsa_signer.kid) is not None
    del jwks_server.documents["/jwks.json"]
    clock.now += clients_module.REFRESH_INTERVAL_S
    assert keys.find("rotated-in") is None
    assert "was fetched 30 s ago and the last attempt failed" in keys.why_unknown()
