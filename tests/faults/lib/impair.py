#!/usr/bin/env python3
"""A userspace netem: an Ethernet bridge between two interfaces that drops, delays (with
jitter, hence reordering) the IPv4 frames crossing it, both directions alike.

This machine's kernel has no sch_netem (CONFIG_NET_SCH_NETEM is not set), so the lossy-network
test puts this bridge in a namespace between the device's and the viewer's:

    ip netns exec MID python3 impair.py IF_A IF_B

Settings come as JSON lines on stdin ({"loss": 0.05, "delay_ms": 50, "jitter_ms": 20,
"reorder": 0.01, "jitter_mode": "fifo" or "independent"}); each
line is answered on stdout with the settings now in force and the counters so far. ARP and
other non-IPv4 frames cross unimpaired. `offload-off IFNAME` (run in the interface's namespace)
turns off checksum offload and segmentation on a veth end, so frames read here are complete.
"""
import ctypes
import fcntl
import heapq
import json
import random
import socket
import struct
import sys
import threading
import time

ETH_P_ALL = 0x0003
SIOCETHTOOL = 0x8946
ETHTOOL_STXCSUM = 0x17
ETHTOOL_SSG = 0x19
ETHTOOL_STSO = 0x1F
ETHTOOL_SGSO = 0x24
ETHTOOL_SGRO = 0x2C


def ethtool_set(ifname, cmd, value):
    buf = ctypes.create_string_buffer(struct.pack("II", cmd, value))
    ifr = struct.pack("16sP", ifname.encode(), ctypes.addressof(buf))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s, SIOCETHTOOL, ifr)


def offload_off(ifname):
    for cmd in (ETHTOOL_STSO, ETHTOOL_SGSO, ETHTOOL_SGRO, ETHTOOL_SSG, ETHTOOL_STXCSUM):
        try:
            ethtool_set(ifname, cmd, 0)
        except OSError as e:
            print(f"offload-off {ifname}: ethtool command {cmd:#x}: {e}", file=sys.stderr)


def bridge(if_a, if_b):
    def open_raw(ifname):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.bind((ifname, 0))
        return s

    sock_a, sock_b = open_raw(if_a), open_raw(if_b)
    # jitter "fifo": each packet's delay is drawn from delay ± jitter but never sends it before the
    # packet ahead of it (order kept), except a `reorder` fraction drawn freely (they overtake or
    # fall behind); "independent": every packet drawn freely, as netem's jitter does (at video
    # packet rates that reorders most packets).
    cfg = {"loss": 0.0, "delay_ms": 0.0, "jitter_ms": 0.0, "reorder": 0.0, "jitter_mode": "fifo"}
    last_due = {}
    counts = {"forwarded": 0, "dropped": 0, "send_errors": 0}
    cond = threading.Condition()
    queue = []  # (due, seq, socket, frame)
    seq = [0]

    def reader(src, dst):
        while True:
            frame, addr = src.recvfrom(65535)
            if addr[2] == socket.PACKET_OUTGOING:
                continue  # what we sent ourselves
            ipv4 = len(frame) >= 14 and frame[12:14] == b"\x08\x00"
            with cond:
                loss, delay, jitter = cfg["loss"], cfg["delay_ms"], cfg["jitter_ms"]
                if ipv4 and random.random() < loss:
                    counts["dropped"] += 1
                    continue
                wait = max(0.0, delay + random.uniform(-jitter, jitter)) if ipv4 else 0.0
                due = time.monotonic() + wait / 1000.0
                free = cfg["jitter_mode"] == "independent" or random.random() < cfg["reorder"]
                if not free:
                    due = max(due, last_due.get(id(dst), 0.0))
                    last_due[id(dst)] = due
                seq[0] += 1
                heapq.heappush(queue, (due, seq[0], dst, frame))
                cond.notify()

    def sender():
        while True:
            with cond:
                while True:
                    now = time.monotonic()
                    if queue and queue[0][0] <= now:
                        break
                    cond.wait(timeout=(queue[0][0] - now) if queue else None)
                _, _, dst, frame = heapq.heappop(queue)
            try:
                dst.send(frame)
                counts["forwarded"] += 1
            except OSError:
                counts["send_errors"] += 1

    for args in ((sock_a, sock_b), (sock_b, sock_a)):
        threading.Thread(target=reader, args=args, daemon=True).start()
    threading.Thread(target=sender, daemon=True).start()
    print(json.dumps({"ready": True, **cfg}), flush=True)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        with cond:
            cfg.update(json.loads(line))
            print(json.dumps({**cfg, **counts}), flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "offload-off":
        offload_off(sys.argv[2])
    elif len(sys.argv) == 3:
        bridge(sys.argv[1], sys.argv[2])
    else:
        sys.exit("usage: impair.py IF_A IF_B | impair.py offload-off IFNAME")
