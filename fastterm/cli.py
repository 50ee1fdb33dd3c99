"""The ``fastterm`` command: ``check``, ``run`` and ``demo``.

Output follows ``nginx -t`` so that operators and scripts that know nginx read it as is:
``fastterm: [emerg] file:line: ...`` then ``configuration file X test failed``, exit 1.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time

from fastterm.certs.store import expiry_warnings, load_certificate
from fastterm.config.model import Config
from fastterm.config.toml import load_config
from fastterm.errors import FasttermError

PROG = "fastterm"


def _say(message: str, *, level: str | None = None, failed: bool = False) -> None:
    """Progress on stdout; warnings, errors and the failure verdict on stderr."""
    prefix = f"{PROG}: [{level}] " if level else f"{PROG}: "
    print(prefix + message, file=sys.stderr if level or failed else sys.stdout, flush=True)


def validate(path: str, *, verbose: bool = False) -> Config:
    """Everything ``check`` and ``run`` verify before serving; warnings go to stderr."""
    config = load_config(path)
    if verbose:
        _say(f"the configuration file {path} syntax is ok")
    for server in config.servers:
        for certificate in server.certificates:
            for warning in expiry_warnings(load_certificate(certificate.cert, certificate.key)):
                _say(warning, level="warn")
    try:
        from fastterm.worker import build_contexts
    except ImportError:
        # The Cython core is not built: the OpenSSL-level checks are skipped, not failed.
        return config
    build_contexts(config)
    return config


def cmd_check(args: argparse.Namespace) -> int:
    try:
        validate(args.config, verbose=True)
    except (FasttermError, OSError) as exc:
        _say(str(exc), level="emerg")
        _say(f"configuration file {args.config} test failed", failed=True)
        return 1
    _say(f"configuration file {args.config} test is successful")
    return 0


def _worker_run():
    """``fastterm.worker.run``, or None (reported) when the Cython core is not built."""
    try:
        from fastterm.worker import run
    except ImportError as exc:
        _say(f"cannot start: the worker is unavailable ({exc}); "
             "build the Cython core with `pip install -e .`", level="emerg")
        return None
    return run


def _serve(config: Config, run) -> int:
    try:
        run(config)
    except KeyboardInterrupt:
        pass
    except (FasttermError, OSError) as exc:
        _say(str(exc), level="emerg")
        return 1
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    try:
        config = validate(args.config)
    except (FasttermError, OSError) as exc:
        _say(str(exc), level="emerg")
        return 1
    run = _worker_run()
    return 1 if run is None else _serve(config, run)


def default_state_dir() -> str:
    return os.environ.get("FASTTERM_STATE") or os.path.expanduser("~/.local/state/fastterm/demo")


def _wait_listening(port: int, child: subprocess.Popen, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and child.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return child.poll() is None
        except OSError:
            time.sleep(0.05)
    return False


def cmd_demo(args: argparse.Namespace) -> int:
    from fastterm.demo import make_demo_pki, write_demo_config

    state = os.path.abspath(os.path.expanduser(args.state_dir))
    try:
        pki = make_demo_pki(state)
        path = write_demo_config(state, args.https_port, args.http_port, args.backend_port)
        config = validate(path)
    except (FasttermError, OSError) as exc:
        _say(str(exc), level="emerg")
        return 1
    run = _worker_run()
    if run is None:
        return 1
    backend = subprocess.Popen([sys.executable, "-m", "fastterm.backend", "--host", "127.0.0.1",
                                "--port", str(args.backend_port)])
    try:
        if not _wait_listening(args.backend_port, backend):
            _say(f"the demo backend did not start on 127.0.0.1:{args.backend_port}", level="emerg")
            return 1
        https = f"https://localhost:{args.https_port}"
        print(f"""
fastterm demo: TLS on {https} -> backend http://127.0.0.1:{args.backend_port}
  state:  {state} (config {path})
  try:
    curl --cacert {pki['ca_cert']} {https}/
    curl --cacert {pki['ca_cert']} --data-binary @{path} {https}/echo
    curl --cacert {pki['ca_cert']} -s -o /dev/null -w '%{{size_download}}\\n' {https}/bytes/1000000
    curl -i http://localhost:{args.http_port}/x
    openssl s_client -connect localhost:{args.https_port} -CAfile {pki['ca_cert']} -brief </dev/null
  Ctrl-C stops.
""", flush=True)
        return _serve(config, run)
    finally:
        backend.terminate()
        try:
            backend.wait(timeout=5)
        except subprocess.TimeoutExpired:
            backend.kill()
            backend.wait()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="TLS terminator and HTTP/1.1 reverse proxy")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="validate a configuration and its certificates, like nginx -t")
    check.add_argument("-c", "--config", required=True, metavar="FILE")
    check.set_defaults(func=cmd_check)
    run = commands.add_parser("run", help="validate then serve until SIGTERM/SIGINT")
    run.add_argument("-c", "--config", required=True, metavar="FILE")
    run.set_defaults(func=cmd_run)
    demo = commands.add_parser("demo",
                               help="serve a local demo: own CA, localhost certificates, echo backend")
    demo.add_argument("--state-dir", default=default_state_dir(), metavar="DIR",
                      help="where the CA, certificates and config live (default: $FASTTERM_STATE "
                           "or ~/.local/state/fastterm/demo)")
    demo.add_argument("--https-port", type=int, default=8443)
    demo.add_argument("--http-port", type=int, default=8080)
    demo.add_argument("--backend-port", type=int, default=8081)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
