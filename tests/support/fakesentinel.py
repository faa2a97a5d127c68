#!/usr/bin/env python3
"""fakesentinel.py - a stand-in for one Redis Sentinel, for tests that need a
Sentinel which names a master and never announces a switch (+switch-master):

  fakesentinel.py --port PORT --master-file PATH

It speaks RESP on 127.0.0.1:PORT and answers PING, SENTINEL
get-master-addr-by-name (any name: the "HOST:PORT" held in PATH, read at
each question; nil when the file is empty) and SUBSCRIBE (confirmed, then
silent). Anything else: an error. Each question is logged on stdout.
"""
import argparse
import asyncio
import sys


def bulk(s):
    b = s.encode()
    return b"$%d\r\n%s\r\n" % (len(b), b)


async def read_command(reader):
    """One RESP array of bulk strings, as a list of str; None at EOF."""
    line = await reader.readline()
    if not line:
        return None
    if not line.startswith(b"*"):
        return line.decode().split()
    args = []
    for _ in range(int(line[1:])):
        hdr = await reader.readline()
        n = int(hdr[1:])
        data = await reader.readexactly(n + 2)
        args.append(data[:-2].decode())
    return args


def answer(args, master_file):
    cmd = args[0].upper() if args else ""
    if cmd == "PING":
        return b"+PONG\r\n"
    if cmd == "SENTINEL" and len(args) == 3 and args[1].lower() == "get-master-addr-by-name":
        with open(master_file) as f:
            addr = f.read().strip()
        print("asked", args[2], "->", addr or "nil", flush=True)
        if not addr:
            return b"*-1\r\n"
        host, _, port = addr.rpartition(":")
        return b"*2\r\n" + bulk(host) + bulk(port)
    if cmd == "SUBSCRIBE":
        return b"".join(b"*3\r\n" + bulk("subscribe") + bulk(ch) + b":%d\r\n" % (i + 1)
                        for i, ch in enumerate(args[1:]))
    return b"-ERR unknown command\r\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--master-file", required=True)
    a = ap.parse_args()

    async def client(reader, writer):
        try:
            while (args := await read_command(reader)) is not None:
                writer.write(answer(args, a.master_file))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        writer.close()

    async def serve():
        server = await asyncio.start_server(client, "127.0.0.1", a.port)
        print("listening", a.port, flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
