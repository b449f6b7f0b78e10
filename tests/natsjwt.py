#!/usr/bin/env python3
"""Makes a NATS operator, its accounts and a user for the cluster suite.

nats-server in operator mode trusts only JWTs its operator signed; Debian
has no nsc to make them, so this does, with the standard library and
python3-cryptography (Ed25519).  Formats, as nats-io/nkeys and nats-io/jwt
(v2) define them:

  nkey    base32 (no padding) of prefix byte + 32-byte public key + CRC16
          (XMODEM, little-endian); a seed has two prefix bytes (S, then
          the key's kind) and the 32-byte private seed.
  JWT     b64url(header) "." b64url(claims) "." b64url(Ed25519 signature
          over the first two parts), unpadded; the issuer's key signs.

Usage: natsjwt.py DIR.  Writes into DIR:
  resolver.conf  operator, system_account, resolver MEMORY and the
                 preloaded account JWTs, to include in nats-server's config
  user.creds     a user of account MPOOL (JetStream on, no other limit)
  forged.creds   a user naming account MPOOL as issuer but signed by
                 another account key: the server must refuse it
"""

import base64
import hashlib
import json
import os
import sys
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

PREFIX_SEED = 18 << 3
PREFIX = {"operator": 14 << 3, "account": 0, "user": 20 << 3}


def crc16(data):
    """CRC-16/XMODEM: polynomial 0x1021, initial value 0."""
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def b32(raw):
    raw += crc16(raw).to_bytes(2, "little")
    return base64.b32encode(raw).decode().rstrip("=")


def b64url(raw):
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


class Key:
    def __init__(self, kind):
        self.kind = kind
        self.seed = os.urandom(32)
        self.priv = Ed25519PrivateKey.from_private_bytes(self.seed)
        pub = self.priv.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        p = PREFIX[kind]
        self.public = b32(bytes([p]) + pub)
        self.encoded_seed = b32(bytes([PREFIX_SEED | p >> 5, (p & 31) << 3]) + self.seed)


def jwt(signer, subject, name, nats, issuer=None):
    """A v2 JWT about subject, signed by signer (issuer: who it claims
    signed it, signer unless a forgery is wanted)."""
    claims = {"jti": "", "iat": int(time.time()), "iss": issuer or signer.public,
              "name": name, "sub": subject.public, "nats": nats}
    # jti: a unique id, the claims' hash with jti empty as nats-io/jwt
    # makes it (the server does not recompute it).
    digest = hashlib.new("sha512_256", json.dumps(claims).encode()).digest()
    claims["jti"] = base64.b32encode(digest).decode().rstrip("=")
    head = b64url(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = b64url(json.dumps(claims).encode())
    sig = signer.priv.sign((head + "." + body).encode())
    return head + "." + body + "." + b64url(sig)


def account_jwt(op, acc, name, jetstream):
    limits = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
              "wildcards": True, "conn": -1, "leaf": -1}
    if jetstream:
        # JetStream is on for an account whose JWT gives it storage.
        limits.update({"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1})
    return jwt(op, acc, name, {"limits": limits, "default_permissions": {"pub": {}, "sub": {}},
                               "type": "account", "version": 2})


def creds(user_jwt, user):
    return ("-----BEGIN NATS USER JWT-----\n%s\n------END NATS USER JWT------\n\n"
            "************************* IMPORTANT *************************\n"
            "NKEY Seed printed below can be used to sign and prove identity.\n"
            "NKEYs are sensitive and should be treated as secrets.\n\n"
            "-----BEGIN USER NKEY SEED-----\n%s\n------END USER NKEY SEED------\n\n"
            "*************************************************************\n"
            % (user_jwt, user.encoded_seed))


def write(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def main():
    d = sys.argv[1]
    op, sys_acc, acc, other = Key("operator"), Key("account"), Key("account"), Key("account")
    user, forged = Key("user"), Key("user")
    op_jwt = jwt(op, op, "mpool-test-op", {"type": "operator", "version": 2,
                                           "system_account": sys_acc.public})
    user_nats = {"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
                 "type": "user", "version": 2}
    write(os.path.join(d, "op.jwt"), op_jwt + "\n")
    write(os.path.join(d, "resolver.conf"),
          "operator: \"%s/op.jwt\"\nsystem_account: %s\nresolver: MEMORY\n"
          "resolver_preload: {\n  %s: \"%s\"\n  %s: \"%s\"\n}\n"
          % (d, sys_acc.public, sys_acc.public, account_jwt(op, sys_acc, "SYS", False),
             acc.public, account_jwt(op, acc, "MPOOL", True)))
    write(os.path.join(d, "user.creds"), creds(jwt(acc, user, "node", user_nats), user))
    write(os.path.join(d, "forged.creds"),
          creds(jwt(other, forged, "node", user_nats, issuer=acc.public), forged))


if __name__ == "__main__":
    main()
