# fastterm production image: the wheel built against Debian's OpenSSL and libnghttp2, run slim.
#   docker build -t fastterm .
#   docker run -p 443:443 -p 80:80 -v /etc/fastterm:/etc/fastterm:ro -v /etc/fastterm/tls:/etc/fastterm/tls:ro fastterm
# Not built here (no Docker engine where it was written): hadolint 2.15 lints it clean (DL3008,
# unpinned apt packages, ignored: bookworm's point releases and security updates are wanted); the same build steps
# (wheel with the Cython core, install into a fresh virtualenv, check, serve) run in
# tests/integration/test_packaging.py.

# ---- build: the wheel of fastterm and of every dependency ---------------------------------------
FROM python:3.11-slim-bookworm AS build
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev libssl-dev libnghttp2-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY ext ext
COPY fastterm fastterm
# setup.py links the Cython core against `pkg-config openssl` and libnghttp2: Debian's
# libssl3 and libnghttp2-14, which the runtime stage installs; the other wheels are manylinux.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# ---- runtime: Python, the two shared libraries, the wheels; no compiler ------------------------
FROM python:3.11-slim-bookworm
# libcap2-bin only for setcap, purged in the same layer (the capability is an xattr of the file).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl3 libnghttp2-14 libcap2-bin \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
# Ports 80 and 443 without root: a file capability on the interpreter (the master binds, the
# workers inherit the sockets). Docker 20.10+ also lowers net.ipv4.ip_unprivileged_port_start
# to 0 in the container's network namespace, Kubernetes does not by default; the capability
# works under both, but not with --security-opt no-new-privileges (exec then grants no file
# capability): use that sysctl there, or ports above 1023. The capability is on the real binary,
# not the python3 symlink; every Python in this image may bind low ports, which is all it runs.
RUN pip install --no-cache-dir --no-index /wheels/*.whl \
 && rm -rf /wheels \
 && setcap cap_net_bind_service=+ep "$(readlink -f /usr/local/bin/python3)" \
 && apt-get purge -y libcap2-bin && apt-get autoremove -y \
 && groupadd --system --gid 10001 fastterm \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin fastterm \
 && install -d -o fastterm -g fastterm -m 0700 /run/fastterm \
 && install -d -m 0755 /etc/fastterm /etc/fastterm/tls
# Numeric: Kubernetes' runAsNonRoot can verify it (deploy/kubernetes runs it as 10001 too).
USER 10001:10001
# fastterm.toml (read-only) and, apart, the certificates, keys and ticket-key file: a Kubernetes
# Secret or a certbot directory mounted there is re-read when it changes, no restart.
# Expected in the config: pid_file = "/run/fastterm/fastterm.pid", admin = "127.0.0.1:9901" (or
# 0.0.0.0:9901 with admin_allow_remote, as deploy/kubernetes for the kubelet's probes). Secrets
# there 0600 fastterm, or 0440 root:fastterm (group 10001 is fastterm's alone: a Kubernetes
# fsGroup), never readable by others: fastterm refuses such a ticket-key file.
VOLUME ["/etc/fastterm", "/etc/fastterm/tls"]
EXPOSE 443 80
# The master is PID 1: it reaps every child (waitpid(-1)) and handles its signals, no init needed.
# SIGTERM is fastterm's graceful stop: listeners close, in-flight requests finish, keep-alive
# connections close after their next response, the rest at limits.drain_timeout. (nginx's image
# says SIGQUIT, nginx's graceful signal; fastterm's SIGQUIT is the fast stop, like nginx's TERM.)
# `docker stop -t` must exceed drain_timeout + 2 s or the runtime kills the drain with SIGKILL.
STOPSIGNAL SIGTERM
# GET /ready on the admin endpoint: 200 while workers accept, 503 once a stop began.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9901/ready', timeout=2)"]
ENTRYPOINT ["fastterm"]
CMD ["run", "-c", "/etc/fastterm/fastterm.toml"]
