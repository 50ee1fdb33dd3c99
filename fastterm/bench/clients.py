"""The Python load generators, each run in its own process on the client CPUs
(``python -m fastterm.bench client KIND ...``): resumed handshakes, the open-loop latency
clients (keep-alive and a new connection per request), idle connections, the slow-header
attacker."""

from __future__ import annotations

import gc
import json
import os
import queue
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from fastterm.bench.system import raise_fd_limit


def _client_ctx(tls12: bool = False, no_ticket: bool = False) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if no_ticket:
        ctx.options |= ssl.OP_NO_TICKET
    return ctx


def _request(path: str, keep_alive: bool) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: localhost\r\n"
            f"{'' if keep_alive else 'Connection: close'}\r\n\r\n").encode().replace(b"\r\n\r\n\r\n", b"\r\n\r\n")


def _read_response(sock) -> int:
    """Read one response with Content-Length from a blocking socket; return its status."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response head")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(None, 2)[1])
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    left = int(m.group(1)) - len(body) if m else 0
    while left > 0:
        chunk = sock.recv(min(left, 65536))
        if not chunk:
            raise ConnectionError("closed in the body")
        left -= len(chunk)
    return status


def client_resume(host: str, port: int, mode: str, duration: float, path: str) -> dict:
    """Resumed handshakes, one request per connection; ``id``: TLS 1.2 session IDs, ``ticket``: TLS 1.3."""
    ctx = _client_ctx(tls12=mode == "id", no_ticket=mode == "id")
    session = None
    n = reused = errors = non2xx = 0
    t0 = time.monotonic()
    deadline = t0 + duration
    req = _request(path, keep_alive=False)
    while time.monotonic() < deadline:
        try:
            raw = socket.create_connection((host, port), timeout=5)
            # The request follows the client's Finished at once: with Nagle it would wait for
            # the ACK of the Finished (a delayed ACK: 40 ms on Linux).
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                s = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
            except BaseException:
                raw.close()
                raise
            with s:
                s.sendall(req)
                if _read_response(s) // 100 != 2:
                    non2xx += 1
                # TLS 1.3 tickets arrive after the handshake: take the newest session each time
                # (a stateful TLS 1.3 session is single-use).
                session = s.session
                n += 1
                reused += s.session_reused
        except (OSError, ValueError):
            errors += 1
            if errors > 1000:
                break
    # The first connection of each client is a full handshake: leave it out of "reused" checks.
    return {"handshakes": n, "reused": reused + (1 if n else 0), "errors": errors, "non2xx": non2xx,
            "elapsed": time.monotonic() - t0}


def _realtime() -> bool:
    """Run this client under SCHED_FIFO where allowed (root): it sleeps 90 % of the time, and
    on a shared CPU each of its wake-ups (a timer, an answer) otherwise waits behind whatever
    else runs there, for milliseconds; that wait, not the terminator's, made the p99."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    except (OSError, AttributeError):
        return False
    return True


def client_latency(host: str, port: int, rate: float, duration: float, path: str, conns: int,
                   start: float | None = None) -> dict:
    """Open-loop: request i is due at t0 + i/rate and is issued then, whatever happened before;
    t0 is ``start`` (``time.monotonic()``, the same for clients run side by side) or 0.5 s
    from now, once the connections are up.

    Its latency counts from the moment it was issued, waiting for a free connection
    included (what wrk2's due time guards), but not the client's own lateness in issuing
    it: asyncio's timers fire up to 1 ms late (epoll's timeout is whole milliseconds,
    rounded up), and a busy client CPU delays them more; that was two thirds of every
    terminator's median and most of a busy round's p99. How late the requests were issued
    is reported (``lag_p50``, ``lag_p99``) for the bench to judge the client.
    """
    import asyncio

    async def go() -> dict:
        ctx = _client_ctx()
        req = _request(path, keep_alive=True)
        queue: asyncio.Queue = asyncio.Queue()
        lat: list[float] = []
        lag: list[float] = []
        counts = {"errors": 0, "non2xx": 0}
        total = int(rate * duration)
        up = asyncio.Event()
        connected = 0

        async def exchange(reader, writer) -> int:
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
            m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            if m:
                await reader.readexactly(int(m.group(1)))
            return int(head.split(None, 2)[1])

        async def conn_worker() -> None:
            nonlocal connected
            writer = None
            try:
                # One request first, not measured: the wait for the common start is then a
                # keep-alive wait, not a new connection's header timeout (2 s in the bench),
                # and a terminator's backend connection is made before it.
                try:
                    reader, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname="localhost")
                    await exchange(reader, writer)
                finally:
                    connected += 1
                    if connected == conns:
                        up.set()
                while True:
                    issued = await queue.get()
                    if issued is None:
                        return
                    status = await exchange(reader, writer)
                    lat.append(time.monotonic() - issued)
                    if status // 100 != 2:
                        counts["non2xx"] += 1
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                counts["errors"] += 1
            finally:
                if writer is not None:
                    writer.close()

        workers = [asyncio.create_task(conn_worker()) for _ in range(conns)]
        # Handshakes are not part of the figure; nor are they run at real-time priority, where
        # a client still shaking hands would hold the CPU from one already measuring.
        await asyncio.wait_for(up.wait(), 30)
        realtime = _realtime()
        # Nor does the cyclic GC run while measuring: a full collection of the client's heap
        # stalled its schedule 10+ ms (what it leaves, seconds of requests, waits till the end).
        gc.collect()
        gc.freeze()
        gc.disable()
        t0 = max(start if start is not None else time.monotonic() + 0.5, time.monotonic())
        for i in range(total):
            due = t0 + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            issued = time.monotonic()
            lag.append(issued - due)
            queue.put_nowait(issued)
        # Stop: whatever is still queued after a grace period did not get an answer in time.
        grace = time.monotonic() + 5.0
        while len(lat) < total and time.monotonic() < grace and any(not w.done() for w in workers):
            await asyncio.sleep(0.01)
        for _ in workers:
            queue.put_nowait(None)
        await asyncio.wait(workers, timeout=5)
        gc.enable()
        lat.sort()
        lag.sort()

        def pct(xs: list[float], p: float) -> float | None:
            return 1000 * xs[min(len(xs) - 1, int(p / 100 * len(xs)))] if xs else None

        return {"offered": total, "done": len(lat), "p50": pct(lat, 50), "p99": pct(lat, 99),
                "p99.9": pct(lat, 99.9), "max": 1000 * lat[-1] if lat else None,
                "lag_p50": pct(lag, 50), "lag_p99": pct(lag, 99), "realtime": realtime, **counts}

    return asyncio.run(go())


def client_connections(host: str, port: int, count: int, path: str) -> None:
    """Open ``count`` TLS connections (100 handshakes in flight), one request each, then hold
    them idle: print ``READY ok errors non2xx`` and close all on a line on stdin.

    Non-blocking ``ssl`` sockets on a selector rather than asyncio: asyncio's SSL transport
    keeps a 256 KiB buffer per connection and took ~35 s of client CPU for 10,000 of them.
    """
    import selectors

    raise_fd_limit(count + 1000)
    ctx = _client_ctx()
    req = _request(path, keep_alive=True)
    sel = selectors.DefaultSelector()
    counts = {"ok": 0, "errors": 0, "non2xx": 0}
    held: list[ssl.SSLSocket] = []
    state: dict[ssl.SSLSocket, list] = {}   # sock -> [phase, received]
    started = 0
    deadline = time.monotonic() + 60 + count / 100

    def start_one() -> None:
        raw = socket.socket()
        raw.setblocking(False)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s = ctx.wrap_socket(raw, server_hostname="localhost", do_handshake_on_connect=False)
        s.connect_ex((host, port))
        state[s] = ["handshake", b""]
        sel.register(s, selectors.EVENT_WRITE)

    def fail(s: ssl.SSLSocket) -> None:
        counts["errors"] += 1
        sel.unregister(s)
        del state[s]
        s.close()

    def step(s: ssl.SSLSocket) -> None:
        st = state[s]
        try:
            if st[0] == "handshake":
                s.do_handshake()
                s.send(req)
                st[0] = "response"
                sel.modify(s, selectors.EVENT_READ)
            while st[0] == "response":
                chunk = s.recv(65536)
                if not chunk:
                    return fail(s)
                st[1] += chunk
                head, sep, body = st[1].partition(b"\r\n\r\n")
                if not sep:
                    continue
                m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                if m and len(body) < int(m.group(1)):
                    continue
                if int(head.split(None, 2)[1]) // 100 != 2:
                    counts["non2xx"] += 1
                counts["ok"] += 1
                sel.unregister(s)
                del state[s]
                held.append(s)
                return None
        except ssl.SSLWantReadError:
            sel.modify(s, selectors.EVENT_READ)
        except ssl.SSLWantWriteError:
            sel.modify(s, selectors.EVENT_WRITE)
        except (OSError, ValueError, IndexError):
            fail(s)
        return None

    while (started < count or state) and time.monotonic() < deadline:
        while started < count and len(state) < 100:
            start_one()
            started += 1
        for key, _ in sel.select(timeout=1.0):
            step(key.fileobj)
    counts["errors"] += len(state) + (count - started)
    print(f"READY {counts['ok']} {counts['errors']} {counts['non2xx']}", flush=True)
    sys.stdin.readline()
    for s in held:
        s.close()


def client_newconn(host: str, port: int, rate: float, duration: float, path: str) -> dict:
    """Open-loop with a new TLS connection (a full handshake) per request: request i is due
    at t0 + i/rate and its latency counts from then, connect and handshake included."""
    import asyncio

    async def go() -> dict:
        ctx = _client_ctx()
        req = _request(path, keep_alive=False)
        lat: list[float] = []
        counts = {"errors": 0, "non2xx": 0}
        total = int(rate * duration)

        async def one(due: float) -> None:
            writer = None
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port, ssl=ctx, server_hostname="localhost"), 10)
                writer.write(req)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                if m:
                    await asyncio.wait_for(reader.readexactly(int(m.group(1))), 10)
                lat.append(time.perf_counter() - due)
                if int(head.split(None, 2)[1]) // 100 != 2:
                    counts["non2xx"] += 1
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                # OSError includes wait_for's TimeoutError
                counts["errors"] += 1
            finally:
                if writer is not None:
                    writer.close()

        tasks = []
        t0 = time.perf_counter()
        for i in range(total):
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(due)))
        await asyncio.wait(tasks, timeout=15)
        lat.sort()

        def pct(p: float) -> float | None:
            return 1000 * lat[min(len(lat) - 1, int(p / 100 * len(lat)))] if lat else None

        return {"offered": total, "done": len(lat), "p50": pct(50), "p99": pct(99),
                "max": 1000 * lat[-1] if lat else None, **counts}

    return asyncio.run(go())


def client_slowheaders(host: str, port: int, count: int, drip: float, ramp: float, path: str) -> None:
    """The attacker: ``count`` TLS connections, each sending a request line and then one
    header byte every ``drip`` seconds, never ending the header block; one the server
    closes is reopened at once. They are opened evenly over ``ramp`` seconds (one header
    timeout), so their expiries are as evenly spread as their opens. Prints ``RAMPED held``
    after the ramp, then samples how many it holds (handshake done, dripping) every 0.1 s
    until a line on stdin, and prints what it saw as JSON.

    Non-blocking ``ssl`` sockets on a selector (see ``client_connections``); drips from a heap.
    """
    import heapq
    import selectors

    raise_fd_limit(count + 1000)
    ctx = _client_ctx()
    head = f"GET {path} HTTP/1.1\r\nHost: localhost\r\n".encode()
    pattern = b"X-Slow: 1\r\n"
    sel = selectors.DefaultSelector()
    sel.register(sys.stdin, selectors.EVENT_READ)
    state: dict[ssl.SSLSocket, list] = {}   # sock -> [phase, bytes dripped]
    drips: list[tuple[float, int, ssl.SSLSocket]] = []
    reopen: list[float] = []                 # heap of times at which to open a connection
    counts = {"opened": 0, "held": 0, "closed_by_server": 0, "responses_408": 0, "errors": 0}
    samples: list[int] = []
    seq = started = 0
    t0 = time.monotonic()
    ramped = False
    next_sample = t0 + ramp

    def open_one() -> None:
        raw = socket.socket()
        raw.setblocking(False)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s = ctx.wrap_socket(raw, server_hostname="localhost", do_handshake_on_connect=False)
        s.connect_ex((host, port))
        state[s] = ["handshake", 0]
        counts["opened"] += 1
        sel.register(s, selectors.EVENT_WRITE)

    def drop(s: ssl.SSLSocket, again: float) -> None:
        if state.pop(s)[0] == "held":
            counts["held"] -= 1
        sel.unregister(s)
        s.close()
        heapq.heappush(reopen, time.monotonic() + again)

    def step(s: ssl.SSLSocket) -> None:
        nonlocal seq
        st = state[s]
        try:
            if st[0] == "handshake":
                s.do_handshake()
                s.send(head)
                st[0] = "held"
                counts["held"] += 1
                sel.modify(s, selectors.EVENT_READ)
                seq += 1
                heapq.heappush(drips, (time.monotonic() + drip, seq, s))
                return
            data = s.recv(65536)   # the server's 408, its close_notify, or EOF
            if data.startswith(b"HTTP/1.1 408"):
                counts["responses_408"] += 1
            if not data:
                counts["closed_by_server"] += 1
                drop(s, 0.0)
        except ssl.SSLWantReadError:
            sel.modify(s, selectors.EVENT_READ)
        except ssl.SSLWantWriteError:
            sel.modify(s, selectors.EVENT_WRITE)
        except ssl.SSLZeroReturnError:
            counts["closed_by_server"] += 1
            drop(s, 0.0)
        except (OSError, ValueError):
            if st[0] == "held":
                counts["closed_by_server"] += 1
                drop(s, 0.0)
            else:
                counts["errors"] += 1
                drop(s, 0.1)   # refused or failed handshake: do not spin

    while True:
        now = time.monotonic()
        while started < count and now >= t0 + started * ramp / count:
            open_one()
            started += 1
        while reopen and reopen[0] <= now:
            heapq.heappop(reopen)
            open_one()
        while drips and drips[0][0] <= now:
            _, _, s = heapq.heappop(drips)
            st = state.get(s)
            if st is None or st[0] != "held":
                continue
            try:
                s.send(pattern[st[1] % len(pattern):][:1])
                st[1] += 1
                seq += 1
                heapq.heappush(drips, (now + drip, seq, s))
            except (OSError, ValueError):
                counts["closed_by_server"] += 1
                drop(s, 0.0)
        if now >= next_sample:
            if not ramped:
                ramped = True
                print(f"RAMPED {counts['held']}", flush=True)
            samples.append(counts["held"])
            next_sample += 0.1
        wake = [next_sample]
        if drips:
            wake.append(drips[0][0])
        if reopen:
            wake.append(reopen[0])
        if started < count:
            wake.append(t0 + started * ramp / count)
        for key, _ in sel.select(timeout=max(0.0, min(wake) - time.monotonic())):
            if key.fileobj is sys.stdin:
                sys.stdin.readline()
                print(json.dumps({"target": count, "held_min": min(samples, default=0),
                                  "held_mean": statistics.fmean(samples) if samples else 0.0,
                                  **counts}), flush=True)
                for s in state:
                    s.close()
                return
            if key.fileobj in state:
                step(key.fileobj)


class DelayRelay:
    """A TCP relay on loopback that holds every chunk ``delay`` seconds each way, so that a
    round trip costs 2 x ``delay`` where loopback's own is microseconds. ``accepted`` gets
    the monotonic time of each client connection."""

    def __init__(self, host: str, port: int, delay: float):
        self.target = (host, port)
        self.delay = delay
        self.accepted: queue.Queue = queue.Queue()
        self.sock = socket.create_server((host, 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.put(time.monotonic())
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        server.settimeout(None)
        for s in (client, server):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pumps = [threading.Thread(target=self._pump, args=(a, b), daemon=True)
                 for a, b in ((client, server), (server, client))]
        for t in pumps:
            t.start()
        for t in pumps:
            t.join(60)
        client.close()
        server.close()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        """Read ``src`` as it comes; a writer sends each chunk (and the EOF) ``delay`` later."""
        chunks: queue.Queue = queue.Queue()

        def writer() -> None:
            while True:
                t, data = chunks.get()
                wait = t + self.delay - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                try:
                    if not data:
                        dst.shutdown(socket.SHUT_WR)
                        return
                    dst.sendall(data)
                except OSError:
                    return

        w = threading.Thread(target=writer, daemon=True)
        w.start()
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            chunks.put((time.monotonic(), data))
            if not data:
                break
        w.join(60)

    def close(self) -> None:
        self.sock.close()


def _s_client(port: int, host: str, sess_in: str | None, sess_out: str | None, early: str | None,
              request: bytes, deadline: float) -> tuple[float | None, str]:
    """One ``openssl s_client`` connection (TLS 1.3, HTTP/1.1, the request on stdin or in
    early data): when the response's first byte came out of it, and all it printed."""
    argv = ["openssl", "s_client", "-connect", f"{host}:{port}", "-servername", "localhost", "-tls1_3",
            "-alpn", "http/1.1", "-ign_eof"]
    argv += ["-sess_in", sess_in] if sess_in else []
    argv += ["-sess_out", sess_out] if sess_out else []
    argv += ["-early_data", early] if early else []
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    timer = threading.Timer(max(0.1, deadline - time.monotonic()), proc.kill)
    timer.start()
    out = bytearray()
    first = None
    try:
        proc.stdin.write(request)
        proc.stdin.close()
        while chunk := proc.stdout.read1(65536):
            out += chunk
            if first is None and b"HTTP/1.1 " in out:
                first = time.monotonic()
    finally:
        timer.cancel()
        proc.kill()
        proc.wait(5)
        proc.stdout.close()
    return first, out.decode("latin-1")


def client_zerortt(host: str, port: int, count: int, delay: float, path: str, budget: float) -> dict:
    """Time to first response byte of resumed TLS 1.3 connections with the request in early
    data (0-RTT) and sent after the handshake (1-RTT), alternating, one at a time, through a
    relay adding ``delay`` seconds each way: from the relay's accept to the response's first
    byte out of ``openssl s_client`` (Python's ssl cannot send early data). One ticket, from
    a first full handshake, resumed by every connection."""
    if shutil.which("openssl") is None:
        return {"error": "openssl not found"}
    d = tempfile.mkdtemp(prefix="fastterm-0rtt-")
    sess = os.path.join(d, "sess.pem")
    early = os.path.join(d, "request.txt")
    request = f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
    with open(early, "wb") as f:
        f.write(request)
    deadline = time.monotonic() + budget
    raw: dict = {"delay_ms": delay * 1000, "ttfb_0rtt": [], "ttfb_1rtt": [], "reused": 0, "accepted": 0,
                 "errors": 0, "non2xx": 0}
    relay = DelayRelay(host, port, delay)
    try:
        _, out = _s_client(port, host, None, sess, None, request, deadline)
        if "HTTP/1.1 " not in out or not os.path.exists(sess) or not os.path.getsize(sess):
            raw["error"] = f"no session ticket from the first connection: {out[-300:]}"
            return raw
        for i in range(2 * count):
            if time.monotonic() > deadline:
                raw["error"] = f"out of time ({budget:g} s) after {i} connections"
                break
            zero = i % 2 == 0
            while not relay.accepted.empty():
                relay.accepted.get_nowait()
            first, out = _s_client(relay.port, host, sess, None, early if zero else None,
                                   b"" if zero else request, deadline)
            try:
                start = relay.accepted.get(timeout=1)
            except queue.Empty:
                start = None
            m = re.search(r"HTTP/1\.1 (\d{3})", out)
            if first is None or start is None or m is None:
                raw["errors"] += 1
                continue
            if not m.group(1).startswith("2"):
                raw["non2xx"] += 1
            raw["reused"] += "Reused, TLSv1.3" in out
            if zero:
                raw["accepted"] += "Early data was accepted" in out
            raw["ttfb_0rtt" if zero else "ttfb_1rtt"].append((first - start) * 1000)
    finally:
        relay.close()
        shutil.rmtree(d, ignore_errors=True)
    for mode in ("0rtt", "1rtt"):
        samples = sorted(raw[f"ttfb_{mode}"])
        if samples:
            raw[f"{mode}_p50"] = statistics.median(samples)
            raw[f"{mode}_p90"] = samples[min(len(samples) - 1, int(0.9 * len(samples)))]
    done = len(raw["ttfb_0rtt"]) + len(raw["ttfb_1rtt"])
    if raw["reused"] < 0.9 * done:
        raw.setdefault("error", f"resumed {raw['reused']} of {done} connections (session tickets off?)")
    if raw["ttfb_0rtt"] and raw["accepted"] < 0.9 * len(raw["ttfb_0rtt"]):
        raw.setdefault("error", f"early data accepted on {raw['accepted']} of {len(raw['ttfb_0rtt'])} "
                                "connections (0-RTT off?)")
    return raw


def client_main(argv: list[str]) -> int:
    kind, host, port, *rest = argv
    if kind == "resume":
        mode, duration, path = rest
        print(json.dumps(client_resume(host, int(port), mode, float(duration), path)))
    elif kind == "latency":
        rate, duration, path, conns, *start = rest
        print(json.dumps(client_latency(host, int(port), float(rate), float(duration), path, int(conns),
                                        float(start[0]) if start else None)))
    elif kind == "connections":
        count, path = rest
        client_connections(host, int(port), int(count), path)
    elif kind == "newconn":
        rate, duration, path = rest
        print(json.dumps(client_newconn(host, int(port), float(rate), float(duration), path)))
    elif kind == "zerortt":
        count, delay, path, budget = rest
        print(json.dumps(client_zerortt(host, int(port), int(count), float(delay), path, float(budget))))
    elif kind == "slowheaders":
        count, drip, ramp, path = rest
        client_slowheaders(host, int(port), int(count), float(drip), float(ramp), path)
    else:
        print(f"unknown client {kind}", file=sys.stderr)
        return 2
    return 0


