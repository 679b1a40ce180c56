#!/usr/bin/env python3
"""An implementation of cosign's formats that is not rebased's, for the
signing tests: Python's `cryptography`, `hashlib.scrypt` and PyNaCl,
written from cosign's published formats (the simple-signing payload, the
`sha256-<hex>.sig` manifest, the encrypted key envelope).

  cosign.py verify REGISTRY REPO DIGEST PUBKEY   exit 0 when it verifies
  cosign.py attestations REGISTRY REPO DIGEST PUBKEY   the .att statements, DSSE verified
  cosign.py tamper REGISTRY REPO FROM TO         FROM's signature on a payload naming TO
  cosign.py make-key DIR PASSWORD                DIR/cosign.key (encrypted) and cosign.pub
  cosign.py read-key KEY PASSWORD                prints the public key PEM
"""
import base64
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request

try:
    import nacl.secret
except ImportError:
    # Debian's python3-nacl, for a python3 that is not Debian's own.
    sys.path.append("/usr/lib/python3/dist-packages")
    import nacl.secret

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

ACCEPT = "application/vnd.oci.image.manifest.v1+json"
SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIG_ANNOTATION = "dev.cosignproject.cosign/signature"


def get(url, accept=ACCEPT):
    req = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(req) as r:
        return r.read()


def sig_tag(digest):
    algo, hexa = digest.split(":", 1)
    return f"{algo}-{hexa}.sig"


def fail(msg):
    print(msg, file=sys.stderr)
    sys.exit(1)


def verify(registry, repo, digest, pubkey_path):
    with open(pubkey_path, "rb") as f:
        public = serialization.load_pem_public_key(f.read())
    if not isinstance(public.curve, ec.SECP256R1):
        fail("not a P-256 key")
    try:
        manifest = json.loads(get(f"http://{registry}/v2/{repo}/manifests/{sig_tag(digest)}"))
    except urllib.error.HTTPError as e:
        fail(f"no signature manifest: {e.code}")
    if manifest.get("config", {}).get("mediaType") != "application/vnd.oci.image.config.v1+json":
        fail(f"unexpected config media type: {manifest.get('config')}")
    for layer in manifest.get("layers", []):
        if layer.get("mediaType") != SIMPLE_SIGNING:
            continue
        sig = layer.get("annotations", {}).get(SIG_ANNOTATION)
        if sig is None:
            continue
        payload = get(f"http://{registry}/v2/{repo}/blobs/{layer['digest']}", "*/*")
        if "sha256:" + hashlib.sha256(payload).hexdigest() != layer["digest"]:
            continue
        try:
            public.verify(base64.b64decode(sig), payload, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            continue
        doc = json.loads(payload)
        crit = doc["critical"]
        if crit["type"] != "cosign container image signature":
            continue
        if crit["image"]["docker-manifest-digest"] != digest:
            continue
        if crit["identity"]["docker-reference"] != f"{registry}/{repo}":
            continue
        print("verified")
        return
    fail("no layer verifies")


def openssl_verifies(pubkey_path, data, der_signature):
    """Whether `openssl dgst -sha256 -verify` accepts DER_SIGNATURE of DATA."""
    with tempfile.TemporaryDirectory() as d:
        data_path, sig_path = os.path.join(d, "data"), os.path.join(d, "sig")
        with open(data_path, "wb") as f:
            f.write(data)
        with open(sig_path, "wb") as f:
            f.write(der_signature)
        r = subprocess.run(["openssl", "dgst", "-sha256", "-verify", pubkey_path,
                            "-signature", sig_path, data_path], capture_output=True)
        return r.returncode == 0


def attestations(registry, repo, digest, pubkey_path):
    """Every attestation of DIGEST whose DSSE signature over the PAE
    verifies, as JSON lines {"predicateType", "annotation", "statement"}."""
    with open(pubkey_path, "rb") as f:
        public = serialization.load_pem_public_key(f.read())
    algo, hexa = digest.split(":", 1)
    manifest = json.loads(get(f"http://{registry}/v2/{repo}/manifests/{algo}-{hexa}.att"))
    out = []
    for layer in manifest["layers"]:
        if layer["mediaType"] != "application/vnd.dsse.envelope.v1+json":
            fail(f"layer media type {layer['mediaType']}")
        env = json.loads(get(f"http://{registry}/v2/{repo}/blobs/{layer['digest']}", "*/*"))
        ptype = env["payloadType"]
        payload = base64.b64decode(env["payload"])
        pae = b"DSSEv1 %d %s %d %s" % (len(ptype), ptype.encode(), len(payload), payload)
        sig = base64.b64decode(env["signatures"][0]["sig"])
        try:
            public.verify(sig, pae, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            fail("a DSSE signature does not verify")
        # And the openssl command over the same PAE: both must accept it.
        if not openssl_verifies(pubkey_path, pae, sig):
            fail("openssl dgst -verify refuses a DSSE signature")
        statement = json.loads(payload)
        out.append({"payloadType": ptype, "annotation": layer["annotations"]["predicateType"],
                    "statement": statement})
    print(json.dumps(out))


def upload_blob(registry, repo, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    req = urllib.request.Request(f"http://{registry}/v2/{repo}/blobs/uploads/", method="POST")
    with urllib.request.urlopen(req) as r:
        loc = r.headers["Location"]
    if loc.startswith("/"):
        loc = f"http://{registry}{loc}"
    sep = "&" if "?" in loc else "?"
    req = urllib.request.Request(f"{loc}{sep}digest={digest}", data=data, method="PUT",
                                 headers={"Content-Type": "application/octet-stream"})
    urllib.request.urlopen(req).read()
    return digest


def tamper(registry, repo, source, target):
    manifest = json.loads(get(f"http://{registry}/v2/{repo}/manifests/{sig_tag(source)}"))
    layer = manifest["layers"][0]
    payload = json.loads(get(f"http://{registry}/v2/{repo}/blobs/{layer['digest']}", "*/*"))
    payload["critical"]["image"]["docker-manifest-digest"] = target
    data = json.dumps(payload, separators=(",", ":")).encode()
    layer["digest"] = upload_blob(registry, repo, data)
    layer["size"] = len(data)
    body = json.dumps(manifest).encode()
    req = urllib.request.Request(f"http://{registry}/v2/{repo}/manifests/{sig_tag(target)}",
                                 data=body, method="PUT", headers={"Content-Type": ACCEPT})
    urllib.request.urlopen(req).read()
    print("tampered")


def make_key(out, password):
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    salt = os.urandom(32)
    box_key = hashlib.scrypt(password.encode(), salt=salt, n=32768, r=8, p=1, maxmem=64 << 20, dklen=32)
    nonce = os.urandom(24)
    sealed = nacl.secret.SecretBox(box_key).encrypt(der, nonce).ciphertext
    env = {
        "kdf": {"name": "scrypt", "params": {"N": 32768, "r": 8, "p": 1},
                "salt": base64.b64encode(salt).decode()},
        "cipher": {"name": "nacl/secretbox", "nonce": base64.b64encode(nonce).decode()},
        "ciphertext": base64.b64encode(sealed).decode(),
    }
    # 64 columns, as Go's encoding/pem (cosign) writes.
    b64 = base64.b64encode(json.dumps(env).encode()).decode()
    body = "".join(b64[i:i + 64] + "\n" for i in range(0, len(b64), 64))
    with open(os.path.join(out, "cosign.key"), "w") as f:
        f.write("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n" + body
                + "-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n")
    with open(os.path.join(out, "cosign.pub"), "wb") as f:
        f.write(key.public_key().public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo))


def read_key(path, password):
    text = open(path).read().strip().splitlines()
    if text[0] not in ("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----",
                       "-----BEGIN ENCRYPTED COSIGN PRIVATE KEY-----"):
        fail(f"unexpected PEM header {text[0]}")
    env = json.loads(base64.b64decode("".join(text[1:-1])))
    assert env["kdf"]["name"] == "scrypt" and env["cipher"]["name"] == "nacl/secretbox"
    p = env["kdf"]["params"]
    box_key = hashlib.scrypt(password.encode(), salt=base64.b64decode(env["kdf"]["salt"]),
                             n=p["N"], r=p["r"], p=p["p"], maxmem=64 << 20, dklen=32)
    der = nacl.secret.SecretBox(box_key).decrypt(base64.b64decode(env["ciphertext"]),
                                                 base64.b64decode(env["cipher"]["nonce"]))
    key = serialization.load_der_private_key(der, password=None)
    sys.stdout.write(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode())


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"verify": verify, "attestations": attestations, "tamper": tamper, "make-key": make_key, "read-key": read_key}[cmd](*args)
