"""Authenticator on tokens signed with real EC P-384 and RSA keys: what passes and every way to fail."""

from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from cds_service.protocol.auth import AuthenticatedClient, Authenticator, AuthError
from tests.auth.auth_support import BASE_URL, SIGN_PATH, VIEW_PATH, Signer, hs256_token, unsigned_parts


def bearer(token: str) -> str:
    return f"Bearer {token}"


def refused(authenticator: Authenticator, authorization: str | None, path: str = SIGN_PATH) -> str:
    with pytest.raises(AuthError) as caught:
        authenticator.authenticate(authorization, path)
    return str(caught.value)


def test_valid_es384_token_passes(authenticator: Authenticator, ec_signer: Signer) -> None:
    client = authenticator.authenticate(bearer(ec_signer.token()), SIGN_PATH)
    assert client == AuthenticatedClient(iss=ec_signer.iss, tenant=None, fhir_servers=())


def test_valid_rs384_token_passes_with_tenant_and_fhir_servers(
    authenticator: Authenticator, rsa_signer: Signer
) -> None:
    client = authenticator.authenticate(bearer(rsa_signer.token(tenant="tenant-b")), SIGN_PATH)
    assert client.iss == rsa_signer.iss
    assert client.tenant == "tenant-b"
    assert client.fhir_servers == ("https://fhir.example.org/r4",)


@pytest.mark.parametrize("alg", ["RS256", "PS384", "RS512"])
def test_rsa_key_without_alg_accepts_other_rsa_algorithms(
    authenticator: Authenticator, rsa_signer: Signer, alg: str
) -> None:
    signer = Signer(iss=rsa_signer.iss, kid=rsa_signer.kid, alg=alg, private_key=rsa_signer.private_key)
    assert authenticator.authenticate(bearer(signer.token(tenant="tenant-a")), SIGN_PATH).iss == signer.iss


def test_scheme_is_case_insensitive(authenticator: Authenticator, ec_signer: Signer) -> None:
    assert authenticator.authenticate("bearer " + ec_signer.token(), SIGN_PATH).iss == ec_signer.iss


@pytest.mark.parametrize("header", [None, "", "   "])
def test_no_header(authenticator: Authenticator, header: str | None) -> None:
    assert "no Authorization header" in refused(authenticator, header)


def test_not_bearer(authenticator: Authenticator, ec_signer: Signer) -> None:
    assert "not Bearer" in refused(authenticator, "Basic " + ec_signer.token())
    assert "not Bearer" in refused(authenticator, ec_signer.token())


@pytest.mark.parametrize(
    "garbage",
    ["Bearer", "Bearer ", "Bearer abc", "Bearer a.b", "Bearer a.b.c.d", "Bearer a b c", "Bearer é.é.é"],
)
def test_garbage(authenticator: Authenticator, garbage: str) -> None:
    assert "not a signed JWT" in refused(authenticator, garbage)


def test_well_formed_but_undecodable(authenticator: Authenticator) -> None:
    assert "malformed" in refused(authenticator, "Bearer aaaa.bbbb.cccc")


def test_oversized_header(authenticator: Authenticator) -> None:
    assert "too long" in refused(authenticator, "Bearer " + "a" * 20_000)


def test_alg_none(authenticator: Authenticator, ec_signer: Signer) -> None:
    parts = unsigned_parts({"alg": "none", "kid": ec_signer.kid, "typ": "JWT"}, ec_signer.claims())
    assert "not a signed JWT" in refused(authenticator, bearer(parts + "."))
    assert "alg 'none' is not allowed" in refused(authenticator, bearer(parts + ".c2ln"))


def test_hs256_signed_with_the_public_key_bytes(authenticator: Authenticator, ec_signer: Signer) -> None:
    """The classic confusion attack: the verifier must not treat the public key as an HMAC secret."""
    for secret in (ec_signer.public_pem(), ec_signer.public_jwk()["x"].encode()):
        token = hs256_token(secret, {"kid": ec_signer.kid, "typ": "JWT"}, ec_signer.claims())
        assert "alg 'HS256' is not allowed" in refused(authenticator, bearer(token))


def test_hs256_with_any_secret(authenticator: Authenticator, ec_signer: Signer) -> None:
    token = jwt.encode(
        ec_signer.claims(), "a-shared-secret-of-enough-length!", "HS256", {"kid": ec_signer.kid}
    )
    assert "not allowed" in refused(authenticator, bearer(token))


def test_wrong_key_with_the_right_kid(authenticator: Authenticator, ec_signer: Signer, other_ec_key) -> None:
    impostor = ec_signer.with_key(other_ec_key)
    assert "signature does not verify" in refused(authenticator, bearer(impostor.token()))


def test_tampered_claims(authenticator: Authenticator, ec_signer: Signer) -> None:
    header, _, signature = ec_signer.token().split(".")
    forged_claims = unsigned_parts({}, ec_signer.claims(VIEW_PATH)).split(".")[1]
    assert "signature does not verify" in refused(
        authenticator, bearer(f"{header}.{forged_claims}.{signature}")
    )


def test_alg_that_does_not_match_the_key(authenticator: Authenticator, ec_signer: Signer, rsa_signer) -> None:
    # The EC client's key is declared ES384; a token claiming RS384 under that kid must not pass.
    confused = Signer(iss=ec_signer.iss, kid=ec_signer.kid, alg="RS384", private_key=rsa_signer.private_key)
    assert "does not match key" in refused(authenticator, bearer(confused.token()))
    p256 = ec.generate_private_key(ec.SECP256R1())
    es256 = Signer(iss=ec_signer.iss, kid=ec_signer.kid, alg="ES256", private_key=p256)
    assert "does not match key" in refused(authenticator, bearer(es256.token()))


def test_missing_kid(authenticator: Authenticator, ec_signer: Signer) -> None:
    token = jwt.encode(ec_signer.claims(), ec_signer.private_key, "ES384")
    assert "no kid" in refused(authenticator, bearer(token))


def test_unknown_kid_with_inline_keys(authenticator: Authenticator, ec_signer: Signer) -> None:
    token = ec_signer.token(headers={"kid": "rotated-away"})
    assert "kid 'rotated-away' is not a known key" in refused(authenticator, bearer(token))


def test_wrong_typ(authenticator: Authenticator, ec_signer: Signer) -> None:
    assert "typ" in refused(authenticator, bearer(ec_signer.token(headers={"typ": "at+jwt"})))


def test_critical_header_extensions_are_refused(authenticator: Authenticator, ec_signer: Signer) -> None:
    """RFC 7515: a verifier that does not understand a 'crit' extension must reject the token (PyJWT does)."""
    token = ec_signer.token(headers={"crit": ["exp-ext"], "exp-ext": 1})
    assert "malformed" in refused(authenticator, bearer(token))


def test_unknown_issuer(authenticator: Authenticator, ec_signer: Signer) -> None:
    assert "is not a trusted client" in refused(
        authenticator, bearer(ec_signer.token(iss="https://evil.example"))
    )
    assert "is not a trusted client" in refused(authenticator, bearer(ec_signer.token(iss=None)))


def test_issuer_of_another_client_with_this_clients_key(
    authenticator: Authenticator, ec_signer: Signer, rsa_signer: Signer
) -> None:
    """Claiming to be the RSA client while signing with the EC client's key and kid."""
    token = ec_signer.token(iss=rsa_signer.iss, tenant="tenant-a")
    assert "not a known key of https://ehr.example.org" in refused(authenticator, bearer(token))


def test_wrong_audience(authenticator: Authenticator, ec_signer: Signer) -> None:
    token = ec_signer.token(aud="https://other-service.example" + SIGN_PATH)
    assert "aud does not name the endpoint" in refused(authenticator, bearer(token))


def test_audience_of_another_endpoint(authenticator: Authenticator, ec_signer: Signer) -> None:
    token = ec_signer.token(VIEW_PATH)
    assert "aud does not name the endpoint" in refused(authenticator, bearer(token), SIGN_PATH)
    assert "aud does not name the endpoint" in refused(
        authenticator, bearer(ec_signer.token()), "/cds-services"
    )


def test_audience_as_list_and_with_trailing_slash(authenticator: Authenticator, ec_signer: Signer) -> None:
    as_list = ec_signer.token(aud=["https://someone-else.example", BASE_URL + SIGN_PATH])
    assert authenticator.authenticate(bearer(as_list), SIGN_PATH).iss == ec_signer.iss
    slash = ec_signer.token(aud=BASE_URL + SIGN_PATH + "/")
    assert authenticator.authenticate(bearer(slash), SIGN_PATH).iss == ec_signer.iss
    discovery = ec_signer.token(aud=BASE_URL + "/cds-services")
    assert authenticator.authenticate(bearer(discovery), "/cds-services/").iss == ec_signer.iss


def test_audience_prefix_is_not_enough(authenticator: Authenticator, ec_signer: Signer) -> None:
    token = ec_signer.token(aud=BASE_URL)
    assert "aud does not name the endpoint" in refused(authenticator, bearer(token))
    assert "lacks the required claim 'aud'" in refused(authenticator, bearer(ec_signer.token(aud=[])))


def test_expired(authenticator: Authenticator, ec_signer: Signer) -> None:
    now = int(time.time())
    token = ec_signer.token(iat=now - 600, exp=now - 120)
    assert "expired" in refused(authenticator, bearer(token))


@pytest.mark.parametrize("skew", [-50, 50])
def test_small_clock_skew_is_tolerated(authenticator: Authenticator, ec_signer: Signer, skew: int) -> None:
    """A client whose clock is 50 s ahead (iat in our future) or behind (exp almost past)."""
    now = int(time.time())
    token = ec_signer.token(iat=now + skew, exp=now + skew + (300 if skew > 0 else 60))
    assert authenticator.authenticate(bearer(token), SIGN_PATH).iss == ec_signer.iss


def test_not_yet_valid(authenticator: Authenticator, ec_signer: Signer) -> None:
    token = ec_signer.token(nbf=int(time.time()) + 300)
    assert "not valid yet" in refused(authenticator, bearer(token))


def test_issued_in_the_future(authenticator: Authenticator, ec_signer: Signer) -> None:
    now = int(time.time())
    token = ec_signer.token(iat=now + 300, exp=now + 600)
    assert "not valid yet" in refused(authenticator, bearer(token))


@pytest.mark.parametrize("claim", ["jti", "exp", "iat", "aud"])
def test_missing_required_claim(authenticator: Authenticator, ec_signer: Signer, claim: str) -> None:
    token = ec_signer.token(**{claim: None})
    assert f"lacks the required claim '{claim}'" in refused(authenticator, bearer(token))


@pytest.mark.parametrize("jti", ["", 42, "x" * 257])
def test_bad_jti(authenticator: Authenticator, ec_signer: Signer, jti: object) -> None:
    assert "jti must be a string" in refused(authenticator, bearer(ec_signer.token(jti=jti)))


def test_replayed_jti(authenticator: Authenticator, ec_signer: Signer) -> None:
    token = ec_signer.token()
    authenticator.authenticate(bearer(token), SIGN_PATH)
    assert "already used (replay)" in refused(authenticator, bearer(token))


def test_same_jti_in_a_new_token_is_still_a_replay(authenticator: Authenticator, ec_signer: Signer) -> None:
    authenticator.authenticate(bearer(ec_signer.token(jti="fixed-id")), SIGN_PATH)
    assert "already used" in refused(authenticator, bearer(ec_signer.token(jti="fixed-id")))


def test_jti_is_scoped_to_its_issuer(
    authenticator: Authenticator, ec_signer: Signer, rsa_signer: Signer
) -> None:
    authenticator.authenticate(bearer(ec_signer.token(jti="shared-id")), SIGN_PATH)
    other = authenticator.authenticate(
        bearer(rsa_signer.token(jti="shared-id", tenant="tenant-a")), SIGN_PATH
    )
    assert other.iss == rsa_signer.iss


def test_rejected_token_does_not_burn_its_jti(authenticator: Authenticator, ec_signer: Signer) -> None:
    """A token refused for its audience must not record the jti, or anyone could block a client's ids."""
    refused(authenticator, bearer(ec_signer.token(VIEW_PATH, jti="not-burnt")), SIGN_PATH)
    assert (
        authenticator.authenticate(bearer(ec_signer.token(jti="not-burnt")), SIGN_PATH).iss == ec_signer.iss
    )


def test_tenant_mismatch(authenticator: Authenticator, rsa_signer: Signer) -> None:
    assert "tenant 'tenant-c' is not one listed" in refused(
        authenticator, bearer(rsa_signer.token(tenant="tenant-c"))
    )
    assert "tenant None is not one listed" in refused(authenticator, bearer(rsa_signer.token()))
    assert "is not one listed" in refused(authenticator, bearer(rsa_signer.token(tenant=["tenant-a"])))


def test_tenant_is_reported_when_the_client_lists_none(
    authenticator: Authenticator, ec_signer: Signer
) -> None:
    assert authenticator.authenticate(bearer(ec_signer.token(tenant="t9")), SIGN_PATH).tenant == "t9"


def test_reasons_never_contain_the_token(
    authenticator: Authenticator, ec_signer: Signer, other_ec_key
) -> None:
    impostor = ec_signer.with_key(other_ec_key)
    tokens = [
        impostor.token(),
        ec_signer.token(VIEW_PATH),
        ec_signer.token(iss="https://evil.example"),
        ec_signer.token(jti=None),
    ]
    for token in tokens:
        reason = refused(authenticator, bearer(token))
        for part in token.split("."):
            assert part not in reason


def test_describe_names_clients_and_store(authenticator: Authenticator, ec_signer: Signer, tmp_path) -> None:
    text = authenticator.describe()
    assert "2 trusted client(s)" in text
    assert ec_signer.iss in text
    assert str(tmp_path / "state.sqlite3") in text
    assert "SQLite" in text


def test_a_token_living_longer_than_five_minutes_is_refused(
    authenticator: Authenticator, ec_signer: Signer
) -> None:
    """CDS Hooks caps exp at 5 minutes ahead: a year-long token would work for a year if stolen, and its
    jti would sit in the replay store for as long."""
    now = int(time.time())
    assert "exp lies more than 360 seconds ahead (300 s and 60 s of clock skew)" in refused(
        authenticator, bearer(ec_signer.token(exp=now + 365 * 86400))
    )
    assert "exp lies more than 360 seconds ahead" in refused(
        authenticator, bearer(ec_signer.token(exp=now + 420))
    )
    assert authenticator.authenticate(bearer(ec_signer.token(exp=now + 340)), SIGN_PATH).iss == ec_signer.iss


def test_five_minutes_and_the_clock_leeway_are_accepted(
    authenticator: Authenticator, ec_signer: Signer
) -> None:
    """A client whose clock runs a little ahead still gets through, like the leeway on exp and iat."""
    now = int(time.time())
    assert authenticator.authenticate(bearer(ec_signer.token(exp=now + 350)), SIGN_PATH).iss == ec_signer.iss


@pytest.mark.parametrize("claim", ["exp", "iat"])
def test_a_numeric_date_given_as_a_string_is_refused(
    authenticator: Authenticator, ec_signer: Signer, claim: str
) -> None:
    """PyJWT converts ``"exp": "1764000000"`` with int(); the JWT standard says NumericDate is a number."""
    value = str(int(time.time()) + (200 if claim == "exp" else 0))
    assert f"{claim} is not a number" in refused(authenticator, bearer(ec_signer.token(**{claim: value})))


@pytest.mark.parametrize("typ", ["JWT", "jwt", "application/jwt", "Application/JWT"])
def test_typ_jwt_as_rfc_7515_allows_it(authenticator: Authenticator, ec_signer: Signer, typ: str) -> None:
    """typ is a media type, case-insensitive, whose "application/" prefix may be left out (RFC 7515 4.1.9)."""
    assert authenticator.authenticate(bearer(ec_signer.token(headers={"typ": typ})), SIGN_PATH).iss


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt", "JWS", "text/jwt", 1])
def test_typ_other_than_jwt_is_refused(authenticator: Authenticator, ec_signer: Signer, typ: object) -> None:
    assert "is not JWT" in refused(authenticator, bearer(ec_signer.token(headers={"typ": typ})))


@pytest.mark.parametrize("suffix", ["/", "//"])
def test_an_issuer_differing_by_a_slash_or_case_is_refused_with_a_hint(
    authenticator: Authenticator, ec_signer: Signer, suffix: str
) -> None:
    """iss is matched exactly; the log says which registered issuer it nearly is."""
    for iss in (ec_signer.iss + suffix, ec_signer.iss.upper()):
        reason = refused(authenticator, bearer(ec_signer.token(iss=iss)))
        assert f"is not a trusted client (registered is {ec_signer.iss!r}: iss is matched exactly)" in reason
    assert "registered is" not in refused(authenticator, bearer(ec_signer.token(iss="https://x.example")))


@pytest.mark.parametrize("alg", ["EdDSA", "ES256K", "es384", "RSA-OAEP"])
def test_an_asymmetric_alg_not_supported_is_refused_naming_those_that_are(
    authenticator: Authenticator, ec_signer: Signer, alg: str
) -> None:
    """EdDSA is asymmetric: 'only asymmetric signatures are accepted' sent the integrator the wrong way."""
    token = unsigned_parts({"alg": alg, "kid": ec_signer.kid, "typ": "JWT"}, ec_signer.claims()) + ".c2ln"
    reason = refused(authenticator, bearer(token))
    assert (
        f"alg '{alg}' is not allowed; accepted are ES256/384/512, RS256/384/512 and PS256/384/512" in reason
    )
