#!/usr/bin/env python3
"""slowdns.py - a tiny authoritative DNS server on loopback for tests: it
answers A queries for the names it is given, after a delay.

  slowdns.py --port PORT --delay-ms MS NAME=IPV4 [NAME=IPV4 ...]

UDP only (the daemons' evdns asks over UDP). A for a known name: one record,
TTL 0. AAAA (or anything else) for a known name: no data (NOERROR, no answer).
Unknown names: NXDOMAIN. Names match case-insensitively (evdns randomises the
case of its questions) and the question is echoed as asked. Each query is
logged on stdout: "<monotonic ms> query <type> <name>", then
"<monotonic ms> answer ..." when its answer leaves, so a test can count them.
SIGTERM stops it.
"""
import argparse
import asyncio
import signal
import struct
import sys
import time


def now_ms():
    return int(time.monotonic() * 1000)


def parse_question(data):
    """(id, flags, question bytes, qname lowercase, qtype) or None."""
    if len(data) < 12:
        return None
    qid, flags, qd, _an, _ns, _ar = struct.unpack("!HHHHHH", data[:12])
    if qd != 1 or flags & 0x8000:
        return None
    pos, labels = 12, []
    while True:
        if pos >= len(data):
            return None
        n = data[pos]
        pos += 1
        if n == 0:
            break
        if n & 0xC0 or pos + n > len(data):
            return None
        labels.append(data[pos:pos + n].decode("ascii", "replace"))
        pos += n
    if pos + 4 > len(data):
        return None
    qtype, _qclass = struct.unpack("!HH", data[pos:pos + 4])
    return qid, flags, data[12:pos + 4], ".".join(labels).lower(), qtype


def build_answer(qid, flags, question, name, qtype, names):
    rd = flags & 0x0100
    ip = names.get(name)
    if ip is None:
        return struct.pack("!HHHHHH", qid, 0x8400 | rd | 3, 1, 0, 0, 0) + question   # NXDOMAIN
    if qtype != 1:
        return struct.pack("!HHHHHH", qid, 0x8400 | rd, 1, 0, 0, 0) + question       # no data
    rr = struct.pack("!HHHIH", 0xC00C, 1, 1, 0, 4) + bytes(int(x) for x in ip.split("."))
    return struct.pack("!HHHHHH", qid, 0x8400 | rd, 1, 1, 0, 0) + question + rr


class Server(asyncio.DatagramProtocol):
    def __init__(self, loop, delay_ms, names):
        self.loop, self.delay, self.names = loop, delay_ms / 1000.0, names

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        q = parse_question(data)
        if not q:
            return
        qid, flags, question, name, qtype = q
        print(f"{now_ms()} query {qtype} {name}", flush=True)
        answer = build_answer(qid, flags, question, name, qtype, self.names)
        self.loop.call_later(self.delay, self.send, answer, addr, name, qtype)

    def send(self, answer, addr, name, qtype):
        print(f"{now_ms()} answer {qtype} {name}", flush=True)
        self.transport.sendto(answer, addr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--delay-ms", type=int, default=0)
    ap.add_argument("names", nargs="+", help="NAME=IPV4")
    a = ap.parse_args()
    names = {}
    for m in a.names:
        n, _, ip = m.partition("=")
        names[n.lower().rstrip(".")] = ip
    loop = asyncio.new_event_loop()
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    loop.run_until_complete(loop.create_datagram_endpoint(
        lambda: Server(loop, a.delay_ms, names), local_addr=("127.0.0.1", a.port)))
    print(f"{now_ms()} listening 127.0.0.1:{a.port} delay_ms={a.delay_ms}", flush=True)
    loop.run_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
