#!/usr/bin/env python3
"""Writes the committed fuzz seeds into fuzz/seeds/<target>/, one file per seed.

The seeds are small, named inputs that each reach one behaviour: the RFC 6455 §5.7 example
frames, fragmented messages, close frames, and one upgrade request per refusal. Re-run this
after changing it; it rewrites every seed it knows and leaves other files alone.

    python3 fuzz/make_seeds.py
"""

import os
import struct

SEEDS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")

# The masking key of the RFC 6455 §5.7 examples.
KEY = bytes([0x37, 0xFA, 0x21, 0x3D])

FIN = 0x80
CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def frame(opcode, payload=b"", fin=True, key=None, rsv=0, length=None):
    """One frame with the minimal length encoding unless `length` forces a declared one."""
    n = len(payload) if length is None else length
    head = bytes([(FIN if fin else 0) | rsv | opcode])
    mask_bit = 0x80 if key is not None else 0
    if n <= 125:
        head += bytes([mask_bit | n])
    elif n <= 0xFFFF:
        head += bytes([mask_bit | 126]) + struct.pack(">H", n)
    else:
        head += bytes([mask_bit | 127]) + struct.pack(">Q", n)
    if key is not None:
        head += key
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + payload


def masked(opcode, payload=b"", fin=True, **kw):
    return frame(opcode, payload, fin, key=KEY, **kw)


def close_payload(code, reason=b""):
    return struct.pack(">H", code) + reason


# The decoder target's config byte: bit 0 role, bits 1-4 cap index, bits 5-7 cut mode.
SERVER, CLIENT = 0, 1
CAP = {0: 0, 16: 6, 125: 8, 126: 9, 1000: 10, 0xFFFF: 11, 0x10000: 12, 1 << 20: 14}


def decoder_input(role, cap, mode, sizes, stream):
    config = role | (CAP[cap] << 1) | (mode << 5)
    return bytes([config]) + bytes(sizes) + stream


RFC_UNMASKED_HELLO = bytes.fromhex("810548656c6c6f")
RFC_MASKED_HELLO = bytes.fromhex("818537fa213d7f9f4d5158")
RFC_FRAGMENT_1 = bytes.fromhex("010348656c")
RFC_FRAGMENT_2 = bytes.fromhex("80026c6f")
RFC_UNMASKED_PING = bytes.fromhex("890548656c6c6f")
RFC_MASKED_PONG = bytes.fromhex("8a8537fa213d7f9f4d5158")
RFC_BINARY_256_HEADER = bytes.fromhex("827e0100")
RFC_BINARY_64K_HEADER = bytes.fromhex("827f0000000000010000")

PATTERN_256 = bytes((i * 31) & 0xFF for i in range(256))

FRAME_SEEDS = {
    "rfc_unmasked_hello": RFC_UNMASKED_HELLO,
    "rfc_masked_hello": RFC_MASKED_HELLO,
    "rfc_fragment_first": RFC_FRAGMENT_1,
    "rfc_fragment_last": RFC_FRAGMENT_2,
    "rfc_unmasked_ping": RFC_UNMASKED_PING,
    "rfc_masked_pong": RFC_MASKED_PONG,
    "rfc_binary_256": RFC_BINARY_256_HEADER + PATTERN_256,
    "rfc_binary_64k_header": RFC_BINARY_64K_HEADER + PATTERN_256[:16],
    "masked_binary_256": masked(BINARY, PATTERN_256),
    "masked_binary_64bit_length": masked(BINARY, PATTERN_256[:20], length=0x10000)[:34],
    "masked_close_1000_bye": masked(CLOSE, close_payload(1000, b"bye")),
    "unmasked_close_1001": frame(CLOSE, close_payload(1001)),
    "masked_ping_125": masked(PING, PATTERN_256[:125]),
    "err_rsv1_set": masked(TEXT, b"hi", rsv=0x40),
    "err_reserved_opcode_3": masked(0x3, b"hi"),
    "err_fragmented_ping": masked(PING, b"hi", fin=False),
    "err_ping_126": bytes([FIN | PING, 0x80 | 126, 0, 126]) + KEY,
    "err_length_msb_set": bytes([FIN | BINARY, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 0]) + KEY,
    "partial_header_16bit": bytes([FIN | BINARY, 0x80 | 126, 0x01]),
}

# Streams a client sends (masked), as the server decodes them.
SERVER_STREAMS = {
    "server_rfc_masked_hello": (1 << 20, 3, [0, 0, 0], RFC_MASKED_HELLO),
    "server_fragmented_with_ping": (
        1 << 20,
        1,
        [5, 0, 3],
        masked(TEXT, b"Hel", fin=False) + masked(PING, b"are you there")
        + masked(CONT, b"lo", fin=True),
    ),
    "server_utf8_split_in_code_point": (
        1 << 20,
        0,
        [1, 2, 3],
        # "€" and "𝄞" cut between fragments in the middle of each code point.
        masked(TEXT, "a€".encode()[:2], fin=False)
        + masked(CONT, "a€".encode()[2:] + "𝄞".encode()[:3], fin=False)
        + masked(CONT, "𝄞".encode()[3:], fin=True),
    ),
    "server_close_1000_then_more": (
        1 << 20,
        5,
        [0, 9, 0],
        masked(CLOSE, close_payload(1000, b"done")) + masked(TEXT, b"ignored"),
    ),
    "server_many_small": (
        1000,
        0,
        [1, 3, 2],
        b"".join(masked(TEXT, b"m%d" % i) for i in range(8))
        + masked(BINARY, PATTERN_256[:40])
        + masked(PONG, b""),
    ),
    "server_binary_256_split": (1000, 4, [2, 1, 0], masked(BINARY, PATTERN_256)),
    "server_err_invalid_utf8_across_fragments": (
        1 << 20,
        2,
        [3, 7, 1],
        masked(TEXT, b"ok \xe2\x82", fin=False) + masked(CONT, b"\x28 bad", fin=True),
    ),
    "server_err_close_code_1005": (1 << 20, 3, [4, 4, 4], masked(CLOSE, close_payload(1005))),
    "server_err_close_one_byte": (1 << 20, 3, [1, 1, 1], masked(CLOSE, b"\x03")),
    "server_err_unmasked_frame": (1 << 20, 3, [2, 2, 2], RFC_UNMASKED_HELLO),
    "server_err_unexpected_continuation": (1 << 20, 3, [2, 2, 2], masked(CONT, b"lo")),
    "server_err_expected_continuation": (
        1 << 20,
        6,
        [4, 9, 0],
        masked(TEXT, b"Hel", fin=False) + masked(TEXT, b"lo"),
    ),
    "server_err_message_too_big_fragments": (
        16,
        1,
        [6, 16, 2],
        masked(TEXT, b"0123456789", fin=False) + masked(CONT, b"abcdefg"),
    ),
    "server_err_ping_126": (0, 3, [0, 0, 0], masked(PING, b"x" * 126)[:8]),
}

# Streams a server sends (unmasked), as the client decodes them.
CLIENT_STREAMS = {
    "client_rfc_unmasked_hello": (1 << 20, 3, [0, 0, 0], RFC_UNMASKED_HELLO),
    "client_rfc_fragmented_hello": (1 << 20, 2, [4, 2, 6], RFC_FRAGMENT_1 + RFC_FRAGMENT_2),
    "client_rfc_ping_pong": (125, 0, [1, 1, 2], RFC_UNMASKED_PING + frame(PONG, b"Hello")),
    "client_rfc_binary_256": (1000, 5, [0, 100, 0], RFC_BINARY_256_HEADER + PATTERN_256),
    "client_binary_256_over_cap": (126, 3, [9, 9, 9], RFC_BINARY_256_HEADER + PATTERN_256),
    "client_binary_64k_header_only": (0x10000, 2, [3, 3, 3], RFC_BINARY_64K_HEADER),
    "client_empty_messages_then_close": (
        0,
        0,
        [0, 1, 2],
        frame(TEXT) + frame(BINARY) + frame(PING) + frame(TEXT, fin=False) + frame(CONT)
        + frame(CLOSE),
    ),
    "client_close_4001_reason": (
        1 << 20,
        1,
        [3, 16, 5],
        frame(CLOSE, close_payload(4001, "replaced ✓".encode())),
    ),
    "client_err_masked_frame": (1 << 20, 3, [0, 0, 0], RFC_MASKED_HELLO),
    "client_err_close_reason_not_utf8": (
        1 << 20,
        3,
        [0, 0, 0],
        frame(CLOSE, close_payload(1000, b"\xff\xfe")),
    ),
}

BROWSER_REQUEST = (
    "GET /echo HTTP/1.1\r\n"
    "Host: push.example.com\r\n"
    "Connection: Upgrade\r\n"
    "Pragma: no-cache\r\n"
    "Cache-Control: no-cache\r\n"
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)\r\n"
    "Upgrade: websocket\r\n"
    "Origin: https://example.com\r\n"
    "Sec-WebSocket-Version: 13\r\n"
    "Accept-Encoding: gzip, deflate, br\r\n"
    "Accept-Language: en-US,en;q=0.9\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    "\r\n"
)

VALID_LINES = [
    "Host: push.example.com",
    "Upgrade: websocket",
    "Connection: keep-alive, Upgrade",
    "Sec-WebSocket-Version: 13",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
]


def request(target="/echo", method="GET", version="HTTP/1.1", lines=VALID_LINES):
    return f"{method} {target} {version}\r\n" + "".join(l + "\r\n" for l in lines) + "\r\n"


def without(prefix):
    return [l for l in VALID_LINES if not l.startswith(prefix)]


def replacing(prefix, line):
    return [line if l.startswith(prefix) else l for l in VALID_LINES]


RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

RESPONSE_101 = (
    "HTTP/1.1 101 Switching Protocols\r\n"
    "Upgrade: websocket\r\n"
    "Connection: Upgrade\r\n"
    f"Sec-WebSocket-Accept: {RFC_ACCEPT}\r\n"
)

HANDSHAKE_SEEDS = {
    "request_browser": BROWSER_REQUEST,
    "request_minimal_with_query": request("/echo?room=lobby"),
    # Short enough for the strict config (256 bytes), with an allowed origin and an offer.
    "request_origin_and_subprotocols": request(
        lines=VALID_LINES + ["Origin: https://EXAMPLE.com", "Sec-WebSocket-Protocol: x, chat.v1"]
    ),
    "request_then_frame": request() + RFC_MASKED_HELLO.decode("latin-1"),
    "refuse_not_found": request("/chat"),
    "refuse_method_post": request(method="POST"),
    "refuse_http_1_0": request(version="HTTP/1.0"),
    "refuse_http_2": request(version="HTTP/2.0"),
    "refuse_missing_host": request(lines=without("Host")),
    "refuse_duplicate_host": request(lines=VALID_LINES + ["Host: other.example.com"]),
    "refuse_missing_upgrade": request(lines=without("Upgrade")),
    "refuse_missing_connection_upgrade": request(
        lines=replacing("Connection", "Connection: keep-alive")
    ),
    "refuse_version_8": request(lines=replacing("Sec-WebSocket-Version", "Sec-WebSocket-Version: 8")),
    "refuse_bad_key": request(
        lines=replacing("Sec-WebSocket-Key", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ")
    ),
    "refuse_origin_not_allowed": request(lines=VALID_LINES + ["Origin: https://evil.example"]),
    "refuse_too_many_headers": request(lines=VALID_LINES + [f"X-Filler-{i}: {i}" for i in range(64)]),
    "refuse_header_too_large": request(lines=VALID_LINES + ["X-Big: " + "a" * 8200]),
    "refuse_malformed": "GET /echo HTTP/1.1\r\nHost push.example.com\r\n\r\n",
    "partial_request": request()[:60],
    "response_101": RESPONSE_101 + "\r\n",
    "response_101_subprotocol_then_frame": RESPONSE_101
    + "Sec-WebSocket-Protocol: chat.v1\r\n\r\n"
    + RFC_UNMASKED_HELLO.decode("latin-1"),
    "response_101_bad_accept": RESPONSE_101.replace("s3pP", "AAAA") + "\r\n",
    "response_101_extension": RESPONSE_101 + "Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
    "response_426_refusal": (
        "HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Length: 2\r\n"
        "Connection: close\r\n\r\nno"
    ),
}


def write(target, name, data):
    if isinstance(data, str):
        data = data.encode("latin-1")
    folder = os.path.join(SEEDS, target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


def main():
    for name, data in FRAME_SEEDS.items():
        write("frame_parse", name, data)
    for role, streams in ((SERVER, SERVER_STREAMS), (CLIENT, CLIENT_STREAMS)):
        for name, (cap, mode, sizes, stream) in streams.items():
            write("decoder", name, decoder_input(role, cap, mode, sizes, stream))
    for name, data in HANDSHAKE_SEEDS.items():
        write("handshake", name, data)


if __name__ == "__main__":
    main()
