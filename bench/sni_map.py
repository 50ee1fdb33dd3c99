"""The SNI map at scale: build time, memory per certificate, lookup time per handshake.

    python bench/sni_map.py [COUNT ...]        (default: 1000 10000)

Writes COUNT ECDSA certificates (one name each) into a PEM directory (HAProxy ``crt DIR``),
builds the plan a worker serves from (``config/plan.py``: read, check, one TLS context per
directory), and reports the build time, the resident memory it added, the time
``TLSContext.select`` (the ClientHello callback's lookup) takes for names spread over the map,
and, once every name has had its first handshake (each ``Identity`` parsed by OpenSSL), the
parse time per certificate and the memory per certificate then.
Not part of the test suite: numbers move with the machine.
"""

from __future__ import annotations

import sys
import tempfile
import time

from fastterm.config.model import Certificate, Config, Route, Server, Upstream
from fastterm.config.plan import build
from fastterm.demo import issue_cert, make_ca


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def measure(count: int) -> dict:
    directory = tempfile.mkdtemp(prefix="fastterm-sni-")
    ca = make_ca("sni bench")
    for i in range(count):
        issued = issue_cert(ca, [f"site{i}.example.test"], "EC")
        with open(f"{directory}/site{i}.pem", "wb") as f:
            f.write(issued.cert_pem + issued.key_pem)
    config = Config(servers=[Server(listen=["127.0.0.1:8443"], certificates=[Certificate(cert=directory)],
                                    routes=[Route(upstream="app")])],
                    upstreams=[Upstream(name="app", servers=["127.0.0.1:8081"])])
    from fastterm._core import Identity  # loaded before the memory baseline

    before = _rss_kib()
    start = time.perf_counter()
    plan = build(config)
    built = time.perf_counter() - start
    added = _rss_kib() - before
    default = plan.listeners[0][1]
    names = [f"site{(i * 7919) % count}.example.test" for i in range(100_000)]
    start = time.perf_counter()
    for name in names:
        default.select(name)
    lookup = (time.perf_counter() - start) / len(names)
    start = time.perf_counter()
    identities = {id(v): v for v in default.sni_entries() if isinstance(v, Identity)}
    for identity in identities.values():
        identity.load()
    parsed = time.perf_counter() - start
    served = _rss_kib() - before
    return {"certificates": count, "build_s": round(built, 2), "build_ms_per_cert": round(built / count * 1e3, 3),
            "rss_mib": round(added / 1024, 1), "kib_per_cert": round(added / count, 1),
            "lookup_us": round(lookup * 1e6, 2),
            # once every name had its first handshake: each identity parsed by OpenSSL
            "first_handshake_parse_ms": round(parsed / max(1, len(identities)) * 1e3, 3),
            "kib_per_cert_all_served": round(served / count, 1)}


def main(argv: list[str]) -> None:
    for count in [int(a) for a in argv] or [1000, 10_000]:
        print(measure(count), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
