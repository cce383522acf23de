#!/usr/bin/env python3
"""Writes fuzz/seeds/: small valid inputs for each fuzz target (run: python3 fuzz/make_seeds.py fuzz/seeds).

Events are signed with a fixed test key by the BIP-340 reference algorithm below,
so the seeds are the same on every run."""
import hashlib, json, os, sys
p = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFFC2F
n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
G = (0x79BE667EF9DCBBAC55A06295CE870B07029BFCDB2DCE28D959F2815B16F81798,
     0x483ADA7726A3C4655DA4FBFC0E1108A8FD17B448A68554199C47D08FFB10D4B8)
def tagged_hash(tag, msg):
    t = hashlib.sha256(tag.encode()).digest()
    return hashlib.sha256(t + t + msg).digest()
def point_add(P1, P2):
    if P1 is None: return P2
    if P2 is None: return P1
    if P1[0] == P2[0] and P1[1] != P2[1]: return None
    if P1 == P2:
        lam = (3 * P1[0] * P1[0] * pow(2 * P1[1], p - 2, p)) % p
    else:
        lam = ((P2[1] - P1[1]) * pow(P2[0] - P1[0], p - 2, p)) % p
    x3 = (lam * lam - P1[0] - P2[0]) % p
    return (x3, (lam * (P1[0] - x3) - P1[1]) % p)
def point_mul(P, k):
    R = None
    for i in range(256):
        if (k >> i) & 1: R = point_add(R, P)
        P = point_add(P, P)
    return R
def bytes_from_int(x): return x.to_bytes(32, "big")
def int_from_bytes(b): return int.from_bytes(b, "big")
def lift_x(x):
    if x >= p: return None
    y_sq = (pow(x, 3, p) + 7) % p
    y = pow(y_sq, (p + 1) // 4, p)
    if pow(y, 2, p) != y_sq: return None
    return (x, y if y & 1 == 0 else p - y)
def pubkey_gen(seckey):
    return bytes_from_int(point_mul(G, int_from_bytes(seckey))[0])
def schnorr_sign(msg, seckey, aux_rand):
    d0 = int_from_bytes(seckey)
    P = point_mul(G, d0)
    d = d0 if P[1] % 2 == 0 else n - d0
    t = bytes(a ^ b for a, b in zip(bytes_from_int(d), tagged_hash("BIP0340/aux", aux_rand)))
    k0 = int_from_bytes(tagged_hash("BIP0340/nonce", t + bytes_from_int(P[0]) + msg)) % n
    R = point_mul(G, k0)
    k = n - k0 if R[1] % 2 != 0 else k0
    e = int_from_bytes(tagged_hash("BIP0340/challenge", bytes_from_int(R[0]) + bytes_from_int(P[0]) + msg)) % n
    return bytes_from_int(R[0]) + bytes_from_int((k + e * d) % n)
def schnorr_verify(msg, pubkey, sig):
    P = lift_x(int_from_bytes(pubkey))
    r = int_from_bytes(sig[0:32]); s = int_from_bytes(sig[32:64])
    if P is None or r >= p or s >= n: return False
    e = int_from_bytes(tagged_hash("BIP0340/challenge", sig[0:32] + pubkey + msg)) % n
    R = point_add(point_mul(G, s), point_mul(P, n - e))
    return R is not None and R[1] % 2 == 0 and R[0] == r
SK = bytes.fromhex("7f" * 32)
PK = pubkey_gen(SK)
def event(kind, tags, content, created_at=1700000000, sign=True):
    pre = json.dumps([0, PK.hex(), created_at, kind, tags, content], separators=(",", ":"), ensure_ascii=False)
    eid = hashlib.sha256(pre.encode()).digest()
    sig = schnorr_sign(eid, SK, b"\0" * 32) if sign else b"\x11" * 64
    if sign: assert schnorr_verify(eid, PK, sig)
    return {"id": eid.hex(), "pubkey": PK.hex(), "created_at": created_at, "kind": kind,
            "tags": tags, "content": content, "sig": sig.hex()}
def c(v): return json.dumps(v, separators=(",", ":"), ensure_ascii=False)
note = event(1, [["t", "nostr"], ["p", "ab" * 32]], "hello, fuzz")
addressable = event(30023, [["d", "article"], ["title", "x"]], "long form")
expiring = event(1, [["expiration", "1800000000"]], "expires")
protected = event(1, [["-"]], "protected")
replaceable = event(0, [], "{\"name\":\"fuzz\"}")
escapes = event(1, [["t", "é\u2028"]], "\"\\\b\t\n\f\r\u0001\u001f\u007f/é", sign=True)
unsigned = event(7, [["e", "cd" * 32]], "+", sign=False)
out = sys.argv[1]
def w(target, name, data):
    d = os.path.join(out, target); os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
for name, ev in [("signed_note", note), ("signed_addressable", addressable), ("signed_expiring", expiring),
                 ("signed_protected", protected), ("signed_replaceable", replaceable),
                 ("signed_escapes", escapes), ("right_id_bad_sig", unsigned)]:
    w("event_validation", name + ".json", c(ev))
w("event_validation", "extra_fields.json", c(dict(note, extra=[1, {"a": None}])))
w("client_message", "event.json", c(["EVENT", note]))
w("client_message", "event_bad_id.json", c(["EVENT", dict(note, id="A" * 64)]))
w("client_message", "event_lone_surrogate.json", '["EVENT",{"id":"' + "a" * 64 + '","content":"\\ud800"}]')
w("client_message", "req.json", c(["REQ", "sub1", {"kinds": [1], "authors": [PK.hex()], "#t": ["nostr"], "since": 1, "until": 2000000000, "limit": 10}, {"ids": [note["id"]]}]))
w("client_message", "req_bad_filter.json", c(["REQ", "s", {"search": "x"}]))
w("client_message", "close.json", c(["CLOSE", "sub1"]))
w("client_message", "count.json", c(["COUNT", "c", {}]))
w("client_message", "unknown.json", c(["NOPE", "x"]))
w("client_message", "neg_open.json", c(["NEG-OPEN", "n", {"kinds": [1], "since": 5}, "6100000200"]))
w("client_message", "neg_msg_bad_hex.json", c(["NEG-MSG", "n", "61zz"]))
w("client_message", "neg_close.json", c(["NEG-CLOSE", "n"]))
w("client_message", "auth.json", c(["AUTH", event(22242, [["relay", "ws://127.0.0.1/"], ["challenge", "c"]], "")]))
w("client_message", "auth_not_an_event.json", c(["AUTH", "x"]))
w("filter", "match.bin", c({"kinds": [1], "authors": [PK.hex()], "#t": ["nostr"], "#p": ["ab" * 32], "since": 1699999999, "until": 1700000001, "limit": 5}).encode() + b"\xff" + c(note).encode())
w("filter", "ids.bin", c({"ids": [note["id"]]}).encode() + b"\xff" + c(note).encode())
w("filter", "unsatisfiable.bin", c({"since": 10, "until": 5}).encode() + b"\xff" + c(note).encode())
w("filter", "empty_list.bin", c({"kinds": [], "#e": []}).encode() + b"\xff" + c(addressable).encode())
w("filter", "alone.json", c({"#t": ["nostr"], "kinds": [1, 7]}))
# http_request
w("http_request", "nip11.http", "GET / HTTP/1.1\r\nHost: relay.example.com\r\nAccept: application/nostr+json\r\n\r\n")
w("http_request", "home.http", "GET / HTTP/1.1\r\nHost: relay.example.com\r\n\r\n")
w("http_request", "options.http", "OPTIONS / HTTP/1.1\r\nHost: r\r\nOrigin: https://a.example\r\nAccess-Control-Request-Method: GET\r\n\r\n")
w("http_request", "post.http", "POST / HTTP/1.1\r\nHost: r\r\nContent-Length: 5\r\n\r\nhello")
w("http_request", "chunked.http", "POST /x HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
w("http_request", "not_found.http", "GET /nope HTTP/1.1\r\nHost: r\r\n\r\nHEAD / HTTP/1.1\r\nHost: r\r\n\r\n")
w("http_request", "counters.http", "GET /debug/counters HTTP/1.1\r\nHost: r\r\n\r\n")
upgrade = "GET / HTTP/1.1\r\nHost: r\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
w("http_request", "ws_upgrade.http", upgrade)
w("http_request", "ws_upgrade_no_key.http", "GET / HTTP/1.1\r\nHost: r\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\r\n")
def ws_frame(payload, opcode=1, mask=b"\x01\x02\x03\x04"):
    b = bytearray([0x80 | opcode])
    L = len(payload)
    if L < 126: b.append(0x80 | L)
    elif L < 65536: b.append(0x80 | 126); b += L.to_bytes(2, "big")
    else: b.append(0x80 | 127); b += L.to_bytes(8, "big")
    b += mask
    b += bytes(x ^ mask[i % 4] for i, x in enumerate(payload))
    return bytes(b)
frames = ws_frame(c(["REQ", "s", {"kinds": [1], "limit": 2}]).encode()) + ws_frame(c(["EVENT", note]).encode()) + ws_frame(c(["CLOSE", "s"]).encode()) + ws_frame(b"\x03\xe8", opcode=8)
w("http_request", "ws_session.http", upgrade.encode() + frames)
w("http_request", "ws_event.http", upgrade.encode() + ws_frame(c(["EVENT", escapes]).encode()))
w("http_request", "ws_garbage.http", upgrade.encode() + ws_frame(b"not json") + ws_frame(b"ping", opcode=9))
