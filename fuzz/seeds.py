#!/usr/bin/env python3
# Writes the hand-made seed inputs of fuzz/corpus/<target>/seed-*. Run once after changing a
# target's input format; the files are committed (CI and `make fuzz` need no Python). Inputs
# the fuzzer found later (crash-* and others worth keeping) live next to them.
import gzip
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def gz(data):
    c = zlib.compressobj(6, zlib.DEFLATED, 16 + 15)
    return c.compress(data) + c.flush()


def entry(status=200, headers=(), body=b"", gzipped=False, times=(1000, 61000, 91000)):
    plain = len(body)
    if gzipped:
        body = gz(body)
    out = b"TCE\x01" + bytes([1 if gzipped else 0]) + struct.pack(">H", status)
    out += struct.pack(">qqqQ", *times, plain) + struct.pack(">H", len(headers))
    for n, v in headers:
        out += struct.pack(">H", len(n)) + n + struct.pack(">I", len(v)) + v
    return out + struct.pack(">Q", len(body)) + body


def bulk(b):
    return b"$%d\r\n%s\r\n" % (len(b), b)


def arr(*items):
    return b"*%d\r\n" % len(items) + b"".join(items)


def i(n):
    return b":%d\r\n" % n


# ---- redis_reply, redis_async: byte 0 = pubsub | pending << 1 | small << 4 | (zones - 1) << 5; byte 1 = step
def rr(name, stream, pending=1, pubsub=False, small=False, zones=1, step=0):
    head = (1 if pubsub else 0) | (pending << 1) | (16 if small else 0) | ((zones - 1) << 5)
    write("redis_reply", name, bytes([head, step]) + stream)
    # redis_async reads the same setup (pub/sub: bit 1 leaves AUTH out, SUBSCRIBE answers first)
    write("redis_async", name, bytes([head, step]) + stream)


E = entry(headers=((b"Content-Type", b"text/plain"),), body=b"hello")
rr("strict-one", arr(i(1700000000000), i(4), i(1000)))
rr("strict-batch", arr(i(1700000000000), i(4), i(1000), i(-250), i(1000), i(0), i(7)), zones=2)
rr("flush", arr(i(3), i(1), i(5), i(0)))
rr("lookup-hit", arr(i(0), i(3), bulk(E), i(0)))
rr("lookup-miss-lock", arr(i(2), i(0), b"$-1\r\n", i(1)))
rr("lookup-batch", arr(i(0), i(3), bulk(E), i(0), i(1), i(1), b"$-1\r\n", i(0)))
rr("fill-lock", b"+OK\r\n$-1\r\n", pending=2)
rr("store", i(1) + i(0) + i(1), pending=3)
rr("invalidate", arr(i(5), i(9)))
rr("noscript", b"-NOSCRIPT No matching script. Please use EVAL.\r\n")
rr("pipelined-extra", i(1) + i(2))
rr("huge-array", b"*2147483647\r\n", step=7)
rr("huge-bulk", b"$2147483647\r\nabc", step=3)
rr("negative-array", b"*-5\r\n")
rr("nested", b"*1\r\n" * 9 + i(1))
rr("no-crlf", b"+" + b"x" * 200, small=True, step=16)
rr("small-limits", arr(*[i(k) for k in range(20)]), small=True)
rr("chunked", arr(i(1700000000000), i(4), i(1000)), step=1)
SUB = arr(bulk(b"subscribe"), bulk(b"cache:filled"), i(1))
rr("pubsub-message", SUB + arr(bulk(b"message"), bulk(b"cache:filled"), bulk(b"1" + b"k" * 10)),
   pubsub=True)
rr("pubsub-purge", SUB + arr(bulk(b"message"), bulk(b"cache:filled"), bulk(b"g12:review")),
   pubsub=True)
rr("pubsub-user-write", SUB + arr(bulk(b"message"), bulk(b"cache:filled"),
   bulk(b"u" + b"a" * 64 + b" 3:review 1:analytics")), pubsub=True)
rr("pubsub-unsubscribe-short", SUB + arr(bulk(b"unsubscribe"), bulk(b"c")), pubsub=True)
rr("pubsub-integer-first", SUB + arr(i(1), bulk(b"c"), i(1)), pubsub=True)
rr("pubsub-error", SUB + b"-ERR no\r\n", pubsub=True)

# ---- cache_entry: byte 0 = small limit | clock shift << 1
write("cache_entry", "plain", b"\x00" + E)
write("cache_entry", "gzip", b"\x02" + entry(body=b"abc" * 100, gzipped=True))
write("cache_entry", "headers", b"\x04" + entry(status=404, headers=(
    (b"Content-Type", b"application/json"), (b"Cache-Control", b"max-age=60"),
    (b"ETag", b'"x"'), (b"Vary", b"Accept-Language")), body=b"{}"))
write("cache_entry", "empty-body", b"\x80" + entry(status=204))
write("cache_entry", "gzip-stream", b"\x00" + gz(b"hello world " * 50))
write("cache_entry", "gzip-bomb", b"\x01" + gz(b"\x00" * 100000))

# ---- cache_key: byte 0 = how B is made, bytes 1-7 A's cuts, bytes 8-14 B's cuts, bytes
fields = [b"api", b"anon", b"GET", b"/a", b"b=c&a=1&a", b"https", b"B.Test.", b"en"]
cuts = []
at = 0
for f in fields[:-1]:
    at += len(f)
    cuts.append(at)
blob = b"".join(fields)
for how in range(8):
    other = [c + 1 if k == 2 else c for k, c in enumerate(cuts)]
    write("cache_key", "how%d" % how, bytes([how] + cuts + other) + blob)

# ---- config_values: the text itself
for k, v in enumerate([b"100r/s", b"1000000000r/d", b"010r/m", b"0r/s", b"5r/x", b"api.v1-x_",
                       b"$cookie_sessionid:${http_x_token}$1$http_cookie", b"127.0.0.1:6379",
                       b"[::1]:6380", b"unix:/run/redis.sock", b"10.0.0.1"]):
    write("config_values", "v%02d" % k, v)

# ---- http_headers: byte 0 = policy, byte 1 = status, then "name: value" lines
write("http_headers", "cacheable", b"\x08\x32" + b"\n".join([
    b"Content-Type: text/html", b"Cache-Control: public, max-age=\"60\", s-maxage=30",
    b"Vary: Accept-Encoding, Accept-Language", b"Accept-Encoding: gzip;q=0.5, br, *;q=0",
    b"Cookie: sessionid=a; SessionId = b, x=1", b"sessionid"]))
write("http_headers", "gzip", b"\x05\x32" + b"\n".join([
    b"Content-Encoding: gzip", b"X-Accel-Expires: @1700000100", b"Cache-Control: private",
    b"Accept-Encoding: x-gzip;Q=1.000", b"x-token"]))
write("http_headers", "refused", b"\x0a\x32" + b"\n".join([
    b"Set-Cookie: a=b", b"Vary: *", b"Cache-Control: no-store, must-revalidate",
    b"X-Accel-Expires: 0", b"X-Accel-Expires: 99999999999"]))

# ---- jwt: byte 0 = mode (0 token, 1 payload behind a good HS256 signature, 2 JWKS)
rfc_payload = (b"eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb2"
               b"90Ijp0cnVlfQ")
write("jwt", "es256-rfc", b"\x00eyJhbGciOiJFUzI1NiJ9." + rfc_payload +
      b".DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q")
write("jwt", "hs256-kid", b"\x00eyJhbGciOiJIUzI1NiIsImtpZCI6ImsifQ.e30.AAAA")
write("jwt", "payload", b'\x01{"user_id":42,"exp":2000000000,"aud":["a","b"],"s":"\\u00e9\\ud83d\\ude00"}')
write("jwt", "payload-deep", b'\x01{"a":' + b"[" * 20 + b"]" * 20 + b"}")
write("jwt", "payload-dup", b'\x01{"a":1,"a":2}')
write("jwt", "jwks", b'\x02{"keys":[{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",'
      b'"y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","alg":"ES256"},{"kty":"RSA","n":"AQAB","e":"AQAB"}]}')
