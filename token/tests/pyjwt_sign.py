#!/usr/bin/env python3
"""Signs a Waybill report token with PyJWT, an implementation independent of ours.

Usage: pyjwt_sign.py KEY.pem KID CLAIMS_JSON [VARIANT]

CLAIMS_JSON is the whole claim set, signed as given: iss, sub, aud, iat, exp, jti, report_id,
status, tracking_id, detail, detail_code, action_required (a JSON boolean) and occurred_at —
every field of the ReportStatus request is a claim of its own (token/src/claims.rs). PyJWT
escapes every character outside ASCII (json.dumps' default), which the verifier reads back to
the exact same text.

VARIANT is "eddsa" (default, what partners do), or one of the forgeries the verifier must
refuse: "none" (alg none), "hs256" (HMAC keyed with the raw public key: the algorithm
confusion of CVE-2022-23540), "jwk" (the public key carried in the header).
Needs `pip install 'PyJWT[crypto]'`.
"""
import json
import sys

import jwt
from cryptography.hazmat.primitives import serialization


def main():
    key_path, kid, claims = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    variant = sys.argv[4] if len(sys.argv) > 4 else "eddsa"
    pem = open(key_path, "rb").read()
    headers = {"kid": kid, "typ": "wb-report+jwt"}
    if variant == "eddsa":
        token = jwt.encode(claims, pem, algorithm="EdDSA", headers=headers)
    elif variant == "none":
        token = jwt.encode(claims, None, algorithm="none", headers=headers)
    elif variant == "hs256":
        private = serialization.load_pem_private_key(pem, password=None)
        raw_public = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        token = jwt.encode(claims, raw_public, algorithm="HS256", headers=headers)
    elif variant == "jwk":
        private = serialization.load_pem_private_key(pem, password=None)
        public_jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(private.public_key()))
        token = jwt.encode(claims, pem, algorithm="EdDSA", headers={**headers, "jwk": public_jwk})
    else:
        sys.exit(f"unknown variant {variant}")
    print(token)


if __name__ == "__main__":
    main()
