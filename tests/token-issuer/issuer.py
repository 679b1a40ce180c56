#!/usr/bin/env python3
"""A token issuer for Debian's docker-registry with `auth: token`, as Docker
Hub, GHCR, Harbor, Quay and GitLab run theirs: `GET /token?service=S&scope=A
&scope=B` with basic credentials answers a JWT (ES256) granting exactly the
scopes asked for, signed by a key whose self-signed certificate (written to
DIR/cert.pem) is the registry's `auth.token.rootcertbundle`.

    issuer.py DIR USER:PASSWORD ISSUER SERVICE

Prints `PORT <n>` once it listens on 127.0.0.1 (a free port); every token
request is appended to DIR/tokens.log as one JSON line
{"user": ..., "scopes": [...], "status": ...}. Needs python3-cryptography.
"""

import base64
import datetime
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_key_and_cert(directory: str):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rebased test token issuer")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    with open(os.path.join(directory, "cert.pem"), "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def access_of(scope: str):
    """`repository:team/app:pull,push` -> the JWT access entry."""
    kind, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    if not kind or not name:
        return None
    return {"type": kind, "name": name, "actions": [a for a in actions.split(",") if a]}


def sign(key, cert, claims) -> str:
    header = {
        "typ": "JWT",
        "alg": "ES256",
        "x5c": [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()],
    }
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    der = key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return signing_input + "." + b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def main():
    directory, credentials, issuer, service = sys.argv[1:5]
    key, cert = make_key_and_cert(directory)
    expected = "Basic " + base64.b64encode(credentials.encode()).decode()
    user = credentials.split(":", 1)[0]
    log_lock = threading.Lock()
    log_path = os.path.join(directory, "tokens.log")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def answer(self, status, body, headers=()):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            url = urlparse(self.path)
            query = parse_qs(url.query)
            scopes = query.get("scope", [])
            authorized = self.headers.get("Authorization") == expected
            status = 200 if url.path == "/token" and authorized else 401
            with log_lock, open(log_path, "a") as log:
                log.write(json.dumps({"user": user if authorized else None,
                                      "scopes": scopes, "status": status}) + "\n")
            if status != 200:
                self.answer(401, {"details": "bad credentials"},
                            [("WWW-Authenticate", 'Basic realm="token"')])
                return
            now = int(time.time())
            access = [a for a in (access_of(s) for s in scopes) if a]
            claims = {
                "iss": issuer,
                "sub": user,
                "aud": query.get("service", [service])[0],
                "exp": now + 300,
                "nbf": now - 10,
                "iat": now,
                "jti": b64url(os.urandom(12)),
                "access": access,
            }
            token = sign(key, cert, claims)
            self.answer(200, {"token": token, "access_token": token, "expires_in": 300})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
