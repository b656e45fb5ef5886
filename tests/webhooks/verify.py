"""Verifies webhook deliveries: ``webhook-signature`` with the official
Standard Webhooks library (PyPI ``standardwebhooks``), ``X-Aegis-Signature``
by hand with the standard library's HMAC.

Reads a JSON list from stdin, one object per delivery: ``secret`` (the
webhook's secret as configured), ``body`` (the request body as received) and
``headers`` (lowercase name to value). A ``whsec_`` secret is given to the
library as text, which it base64-decodes; any other secret is its UTF-8 bytes
(SPEC section 6), given as bytes. Prints one JSON line: for each delivery, in
order, ``{"standard": ..., "aegis": ...}`` with ``"ok"`` or what failed.
"""

import base64
import hashlib
import hmac
import json
import sys

from standardwebhooks.webhooks import Webhook


def key_bytes(secret):
    if secret.startswith("whsec_"):
        return base64.b64decode(secret[len("whsec_"):])
    return secret.encode("utf-8")


def standard(delivery):
    secret = delivery["secret"]
    key = secret if secret.startswith("whsec_") else secret.encode("utf-8")
    try:
        Webhook(key).verify(delivery["body"], delivery["headers"], json_parse=False)
        return "ok"
    except Exception as err:  # noqa: BLE001 - every failure is reported, none is fatal
        return f"{type(err).__name__}: {err}"


def aegis(delivery):
    sent = delivery["headers"].get("x-aegis-signature", "")
    mac = hmac.new(key_bytes(delivery["secret"]), delivery["body"].encode("utf-8"), hashlib.sha256)
    expected = "sha256=" + mac.hexdigest()
    return "ok" if hmac.compare_digest(sent, expected) else f"expected {expected}, got {sent!r}"


def main():
    deliveries = json.load(sys.stdin)
    print(json.dumps([{"standard": standard(d), "aegis": aegis(d)} for d in deliveries]))


if __name__ == "__main__":
    main()
