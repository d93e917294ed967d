#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (committed; rerun to regenerate).

corpus/query: queries for the fixed model of `testing::engine_with_cluster`
(names of the bench cluster, every type the server treats specially, with
and without EDNS). corpus/upstream: upstream responses (answers, NXDOMAIN
with SOA, truncated, compressed names, OPT last).
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def name(n):
    out = b""
    for label in n.rstrip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def opt(size=1232, version=0):
    return b"\0" + struct.pack(">HHBBHH", 41, size, 0, version, 0, 0)


def query(qid, qname, qtype, edns=None, flags=0x0100, opcode=0):
    flags |= opcode << 11
    head = struct.pack(">HHHHHH", qid, flags, 1, 0, 0, 1 if edns else 0)
    return head + name(qname) + struct.pack(">HH", qtype, 1) + (opt(edns) if edns else b"")


TYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "HINFO": 13, "TXT": 16, "AAAA": 28, "SRV": 33, "AXFR": 252, "ANY": 255}
NAMES = [
    "svc-1.bench.svc.cluster.local.",
    "SVC-2.Bench.svc.cluster.local.",
    "headless.bench.svc.cluster.local.",
    "web-0.headless.bench.svc.cluster.local.",
    "_http._tcp.svc-4.bench.svc.cluster.local.",
    "_http._tcp.headless.bench.svc.cluster.local.",
    "198-18-0-5.bench.pod.cluster.local.",
    "dns.cluster.local.",
    "ns.dns.cluster.local.",
    "cluster.local.",
    "dns-version.cluster.local.",
    "nope.bench.svc.cluster.local.",
    "10.0.18.198.in-addr.arpa.",
    "www.example.org.",
]


def write(target, label, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, label), "wb") as f:
        f.write(data)


def main():
    i = 0
    for n in NAMES:
        for t in ("A", "AAAA", "SRV", "PTR", "ANY", "TXT"):
            for edns in (None, 1232):
                i += 1
                write("query", f"{i:03}-{t}-{'edns' if edns else 'plain'}", query(i, n, TYPES[t], edns))
    write("query", "axfr", query(1, "cluster.local.", TYPES["AXFR"]))
    write("query", "notify", query(2, "cluster.local.", TYPES["SOA"], opcode=4))
    write("query", "edns-v1", query(3, "svc-1.bench.svc.cluster.local.", 1, 1232)[:-11] + b"\0" + struct.pack(">HHBBHH", 41, 1232, 0, 1, 0, 0))
    write("query", "compressed-question", struct.pack(">HHHHHH", 4, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c" + struct.pack(">HH", 1, 1))

    def response(qname, records, rcode=0, tc=False, auth=b"", nauth=0, with_opt=True):
        flags = 0x8180 | (0x0200 if tc else 0) | rcode
        body = name(qname) + struct.pack(">HH", 1, 1)
        head = struct.pack(">HHHHHH", 7, flags, 1, len(records), nauth, 1 if with_opt else 0)
        return head + body + b"".join(records) + auth + (opt() if with_opt else b"")

    a = lambda ip, ttl=300: b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, ttl, 4) + bytes(ip)
    write("upstream", "one-a", response("www.example.org.", [a([192, 0, 2, 1])]))
    write("upstream", "many-a", response("big.example.org.", [a([192, 0, 2, k]) for k in range(1, 80)]))
    write("upstream", "truncated", response("big.example.org.", [], tc=True))
    soa_rdata = name("ns.example.org.") + name("host.example.org.") + struct.pack(">IIIII", 1, 2, 3, 4, 60)
    soa = b"\xc0\x0c" + struct.pack(">HHIH", 6, 1, 60, len(soa_rdata)) + soa_rdata
    write("upstream", "nxdomain-soa", response("nx.example.org.", [], rcode=3, auth=soa, nauth=1))
    cname_rdata = b"\x03www\xc0\x10"
    cname = b"\xc0\x0c" + struct.pack(">HHIH", 5, 1, 300, len(cname_rdata)) + cname_rdata
    write("upstream", "cname-chain", response("alias.example.org.", [cname, b"\xc0\x2b" + struct.pack(">HHIH", 1, 1, 300, 4) + bytes([192, 0, 2, 9])]))
    write("upstream", "no-opt", response("www.example.org.", [a([192, 0, 2, 1])], with_opt=False))


if __name__ == "__main__":
    main()
