#!/usr/bin/env python3
"""Writes the seed corpus: the hex examples of PROTOCOLS.md §2.1 and §3.3–3.9 as binary files.

Run from fuzz/: python3 gen_corpus.py. The packet seeds are the vectors of
src/rdg/packet_tests.rs; the chunked and websocket seeds wrap some of them as the IN channel
(chunked, one packet per chunk) and the WebSocket transport carry them.
"""
import os

PACKETS = {
    "handshake_request": "01 00 00 00 0E 00 00 00 01 00 00 00 02 00",
    "handshake_response": "02 00 00 00 12 00 00 00 00 00 00 00 01 00 00 00 02 00",
    "tunnel_create": "04 00 00 00 1C 00 00 00 0D 00 00 00 01 00 00 00 0A 00 54 00 6B 00 3D 00 31 00 00 00",
    "tunnel_response_ok": "05 00 00 00 1A 00 00 00 00 00 00 00 00 00 03 00 00 00 0A 00 00 00 02 00 00 00",
    "tunnel_response_denied": "05 00 00 00 12 00 00 00 00 00 F8 59 07 80 00 00 00 00",
    "tunnel_auth": "06 00 00 00 1C 00 00 00 00 00 10 00 50 00 4F 00 52 00 54 00 49 00 43 00 4F 00 00 00",
    "tunnel_auth_response": "07 00 00 00 18 00 00 00 00 00 00 00 03 00 00 00 00 00 00 80 00 00 00 00",
    "channel_create": "08 00 00 00 1A 00 00 00 01 00 83 08 03 00 0A 00 68 00 76 00 30 00 31 00 00 00",
    "channel_response": "09 00 00 00 14 00 00 00 00 00 00 00 01 00 00 00 01 00 00 00",
    "data": "0A 00 00 00 0E 00 00 00 04 00 03 00 00 13",
    "keepalive": "0D 00 00 00 08 00 00 00",
    "close_channel_response": "11 00 00 00 0C 00 00 00 00 00 00 00",
    "close_channel": "10 00 00 00 0C 00 00 00 CA 04 00 00",
    "service_message": "0B 00 00 00 10 00 00 00 06 00 48 00 69 00 00 00",
    "reauth_message": "0C 00 00 00 10 00 00 00 08 07 06 05 04 03 02 01",
    "extended_auth_msg": "03 00 00 00 10 00 00 00 00 00 00 00 02 00 AA BB",
}
MASKED_HANDSHAKE = "82 8E 11 22 33 44 10 22 33 44 1F 22 33 44 10 22 33 44 13 22"

def b(h):
    return bytes.fromhex(h)

def write(target, name, data):
    with open(os.path.join("corpus", target, name), "wb") as f:
        f.write(data)

client = ["handshake_request", "tunnel_create", "tunnel_auth", "channel_create", "data", "close_channel"]
server = ["handshake_response", "tunnel_response_ok", "tunnel_auth_response", "channel_response", "keepalive"]
for name, h in PACKETS.items():
    write("packet", name, b(h))
write("packet", "client_stream", b"".join(b(PACKETS[n]) for n in client))
write("packet", "server_stream", b"".join(b(PACKETS[n]) for n in server))

body = b""
for i, n in enumerate(client):
    p = b(PACKETS[n])
    size = ("%x" if n == "data" else "%X") % len(p)
    body += size.encode() + b"\r\n" + p + b"\r\n"
write("chunked", "in_channel", body + b"0\r\n\r\n")
write("chunked", "extension_trailer", b"4;x=y\r\nWiki\r\n0\r\nX-T: 1\r\n\r\n")

def frame(op, payload, mask=None):
    n = len(payload)
    head = bytes([0x80 | op])
    mbit = 0x80 if mask else 0
    if n < 126:
        head += bytes([mbit | n])
    elif n < 65536:
        head += bytes([mbit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([mbit | 127]) + n.to_bytes(8, "big")
    if mask:
        payload = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
        head += mask
    return head + payload

write("websocket", "masked_handshake", b(MASKED_HANDSHAKE))
write("websocket", "server_stream", b"".join(frame(2, b(PACKETS[n])) for n in server))
write("websocket", "control", frame(9, b"hi") + frame(10, b"hi", b"\x01\x02\x03\x04") + frame(8, b"\x03\xe8"))
write("websocket", "len16", frame(2, bytes(200), b"\x11\x22\x33\x44"))

# DNS queries (src/dns/fuzzing.rs): the zone there is lab.test.
import struct
def dns_query(name, qtype, edns=None, flags=0x0100, qid=0x1234):
    q = struct.pack(">HHHHHH", qid, flags, 1, 0, 0, 1 if edns else 0)
    for label in name.strip(".").split("."):
        if label:
            q += bytes([len(label)]) + label.encode()
    q += b"\0" + struct.pack(">HH", qtype, 1)
    if edns:
        q += b"\0" + struct.pack(">HHIH", 41, edns, 0x8000, 0)
    return q

os.makedirs(os.path.join("corpus", "dns_query"), exist_ok=True)
write("dns_query", "alias_a", dns_query("rdgw.lab.test", 1))
write("dns_query", "alias_aaaa_edns", dns_query("RDGW.lab.TEST", 28, 1232))
write("dns_query", "apex_soa", dns_query("lab.test", 6))
write("dns_query", "apex_ns_edns512", dns_query("lab.test", 2, 512))
write("dns_query", "any", dns_query("lab.test", 255, 4096))
write("dns_query", "axfr", dns_query("lab.test", 252))
write("dns_query", "nxdomain", dns_query("nope.lab.test", 1))
write("dns_query", "outside", dns_query("example.com", 1))
write("dns_query", "update_opcode", dns_query("lab.test", 6, flags=0x2800))
