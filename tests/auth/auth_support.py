"""Real keys, real signed tokens and a loopback JWK Set server for the authentication tests."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from cds_service.config import Settings
from cds_service.protocol.auth import Authenticator, AuthError

BASE_URL = "https://cds.example.test"
SIGN_PATH = "/cds-services/b12-iron-order-sign"
VIEW_PATH = "/cds-services/b12-iron-patient-view"


@dataclass
class Signer:
    """A client's private key and identity; mints tokens the way a CDS client does."""

    iss: str
    kid: str
    alg: str
    private_key: Any

    def public_jwk(self, *, with_alg: bool = True) -> dict[str, Any]:
        public = self.private_key.public_key()
        maker = ECAlgorithm if isinstance(public, ec.EllipticCurvePublicKey) else RSAAlgorithm
        jwk = maker.to_jwk(public, as_dict=True)
        jwk.update(kid=self.kid, use="sig")
        if with_alg:
            jwk["alg"] = self.alg
        return jwk

    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def claims(self, path: str = SIGN_PATH, **overrides: Any) -> dict[str, Any]:
        """Fresh claims for `path`; an override of None removes the claim."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.iss,
            "aud": BASE_URL + path,
            "exp": now + 300,
            "iat": now,
            "jti": str(uuid.uuid4()),
        }
        for name, value in overrides.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return claims

    def token(self, path: str = SIGN_PATH, *, headers: dict[str, Any] | None = None, **claims: Any) -> str:
        header = {"kid": self.kid, "typ": "JWT", **(headers or {})}
        header = {k: v for k, v in header.items() if v is not None}
        return jwt.encode(self.claims(path, **claims), self.private_key, algorithm=self.alg, headers=header)

    def with_key(self, private_key: Any) -> Signer:
        """The same identity (iss, kid, alg) but a different private key: an impostor."""
        return Signer(iss=self.iss, kid=self.kid, alg=self.alg, private_key=private_key)


def ec_p384_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_parts(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())


def hs256_token(secret: bytes, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """An HMAC token made by hand (PyJWT refuses to use a public key as an HMAC secret)."""
    signing_input = unsigned_parts({"alg": "HS256", **header}, claims)
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(signature)


def write_clients(directory: Path, clients: list[dict[str, Any]], name: str = "clients.json") -> Path:
    path = directory / name
    path.write_text(json.dumps({"clients": clients}), encoding="utf-8")
    return path


def ehr_signer() -> Signer:
    """An EHR signing ES384, the one client of a served instance's tests."""
    return Signer(iss="https://ehr.example.test", kid="k1", alg="ES384", private_key=ec_p384_key())


def serve_requiring_jwts(directory: Path, signer: Signer) -> dict[str, str]:
    """The settings of a served instance that requires JWTs, ``signer`` its one registered client (its
    clients file written to ``directory``)."""
    clients = write_clients(directory, [{"iss": signer.iss, "jwks": {"keys": [signer.public_jwk()]}}])
    return {"CDS_AUTH": "required", "CDS_CLIENTS": str(clients), "CDS_PUBLIC_BASE_URL": BASE_URL}


def auth_settings(directory: Path, clients_file: Path | None, **overrides: Any) -> Settings:
    return Settings(
        auth="required",
        clients_file=clients_file,
        public_base_url=BASE_URL,
        state_db=str(directory / "state.sqlite3"),
        feedback_db=str(directory / "feedback.sqlite3"),
    ).with_overrides(**overrides)


@dataclass
class JwksServer:
    """A loopback HTTP server publishing JSON documents (or ``raw`` bodies, served as they are); it
    counts requests by path and keeps any Authorization header it receives (to prove a token did, or did
    not, reach it)."""

    documents: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, bytes] = field(default_factory=dict)
    hits: Counter[str] = field(default_factory=Counter)
    authorizations: list[str] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    def start(self) -> JwksServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.hits[self.path] += 1
                if self.headers.get("Authorization"):
                    owner.authorizations.append(self.headers["Authorization"])
                document = owner.documents.get(self.path)
                body = json.dumps(document).encode() if document is not None else b"{}"
                if self.path in owner.raw:
                    document, body = True, owner.raw[self.path]
                self.send_response(200 if document is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def url(self, path: str) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def publish(self, path: str, *signers: Signer) -> str:
        self.documents[path] = {"keys": [s.public_jwk() for s in signers]}
        return self.url(path)

    def total_hits(self) -> int:
        return sum(self.hits.values())

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def authenticate_in_process(settings: Settings, tokens: list[str], barrier: Any, results: Any) -> None:
    """Run in a separate process (another 'worker'): try each token and report which were accepted."""
    authenticator = Authenticator(settings)
    barrier.wait(timeout=60)
    accepted = []
    for index, token in enumerate(tokens):
        try:
            authenticator.authenticate(f"Bearer {token}", SIGN_PATH)
        except AuthError:
            continue
        accepted.append(index)
    results.put(accepted)
