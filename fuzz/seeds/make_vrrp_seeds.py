#!/usr/bin/env python3
"""Writes the vrrp_packet seeds: valid VRRP v2 and v3 advertisements (and a few near
misses), each after the profile header the fuzz target reads (see
fuzz_targets/vrrp_packet.rs). Run from this directory; the output is committed."""

import ipaddress
import os
import struct


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ip(a: str) -> bytes:
    return ipaddress.IPv4Address(a).packed


def vrrp(version, vrid, priority, interval, addresses, password=None, src=None, dst=None,
         pseudo=True):
    """The VRRP message; v3's checksum over the pseudo-header (keepalived) or not (RFC 9568)."""
    body = bytes([version << 4 | 1, vrid, priority, len(addresses)])
    if version == 2:
        body += bytes([1 if password else 0, interval // 100])
    else:
        body += struct.pack("!H", interval & 0x0FFF)
    body += b"\0\0" + b"".join(ip(a) for a in addresses)
    if version == 2:
        body += (password or b"").ljust(8, b"\0")
    covered = body
    if version == 3 and pseudo:
        covered = ip(src) + ip(dst) + bytes([0, 112]) + struct.pack("!H", len(body)) + body
    return body[:6] + struct.pack("!H", checksum(covered)) + body[8:]


def ipv4(src, dst, message, ttl=255):
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0xC0, 20 + len(message), 0, 0, ttl, 112, 0,
                         ip(src), ip(dst))
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + message


def profile(version, vrid, priority, interval, addresses, password=None, peers=()):
    flags = (1 if version == 2 else 0) | (2 if password else 0) | (4 if peers else 0)
    head = bytes([flags, vrid, priority])
    head += bytes([interval // 100, 0]) if version == 2 else struct.pack("!H", interval)
    head += bytes([len(addresses) - 1]) + b"".join(ip(a) for a in addresses)
    if password:
        head += password.ljust(8, b"\0")
    if peers:
        head += bytes([len(peers) - 1]) + b"".join(ip(p) for p in peers)
    return head


GROUP = "224.0.0.18"
seeds = {}
vips = ["192.0.2.10"]
seeds["v3-multicast-keepalived"] = profile(3, 51, 100, 100, vips) + ipv4(
    "10.0.0.2", GROUP, vrrp(3, 51, 100, 100, vips, src="10.0.0.2", dst=GROUP))
two = ["192.0.2.10", "198.51.100.7"]
seeds["v3-multicast-rfc9568-checksum"] = profile(3, 7, 150, 50, two) + ipv4(
    "10.0.0.3", GROUP, vrrp(3, 7, 150, 50, two, pseudo=False))
seeds["v3-priority-0-leaving"] = profile(3, 51, 100, 100, vips) + ipv4(
    "10.0.0.2", GROUP, vrrp(3, 51, 0, 100, vips, src="10.0.0.2", dst=GROUP))
seeds["v3-unicast-peer"] = profile(3, 9, 90, 200, vips, peers=["10.0.0.3"]) + ipv4(
    "10.0.0.3", "10.0.0.2", vrrp(3, 9, 120, 200, vips, src="10.0.0.3", dst="10.0.0.2"), ttl=64)
seeds["v2-password"] = profile(2, 51, 100, 100, vips, password=b"secret") + ipv4(
    "10.0.0.2", GROUP, vrrp(2, 51, 100, 100, vips, password=b"secret"))
three = ["192.0.2.10", "192.0.2.11", "192.0.2.12"]
seeds["v2-no-auth"] = profile(2, 200, 254, 300, three) + ipv4(
    "10.0.0.4", GROUP, vrrp(2, 200, 254, 300, three))
good = seeds["v3-multicast-keepalived"]
seeds["v3-truncated"] = good[:-3]
seeds["v3-bad-checksum"] = good[:-1] + bytes([good[-1] ^ 0xFF])
seeds["v3-ttl-64"] = good.replace(bytes([255, 112]), bytes([64, 112]), 1)
seeds["v2-wrong-password"] = profile(2, 51, 100, 100, vips, password=b"secret") + ipv4(
    "10.0.0.2", GROUP, vrrp(2, 51, 100, 100, vips, password=b"guess"))

out = "vrrp_packet"
os.makedirs(out, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
