"""The ``fastterm`` command: ``check``, ``run``, ``convert``, ``demo`` and the control commands.

Output follows ``nginx -t`` so that operators and scripts that know nginx read it as is:
``fastterm: [emerg] file:line: ...`` then ``configuration file X test failed``, exit 1.
Every command that reads a configuration takes ``-c fastterm.toml`` or ``--nginx nginx.conf``
(one of them); both become the same model (``fastterm.config.ConfigSource``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

from fastterm.certs.store import (
    chain_warnings,
    expiry_warnings,
    inventory,
    key_permission_warnings,
    load_server_certificates,
)
from fastterm.config import ConfigSource
from fastterm.config.model import Config
from fastterm.errors import FasttermError
from fastterm.keys import read_key_files
from fastterm.process import stop as stop_process

PROG = "fastterm"


def _say(message: str, *, level: str | None = None, failed: bool = False) -> None:
    """Progress on stdout; warnings, errors and the failure verdict on stderr."""
    prefix = f"{PROG}: [{level}] " if level else f"{PROG}: "
    print(prefix + message, file=sys.stderr if level or failed else sys.stdout, flush=True)


def _warn(message: str, level: str = "warn") -> None:
    _say(message, level=level)


def validate(source: ConfigSource | str, *, verbose: bool = False) -> Config:
    """Everything ``check`` and ``run`` verify before serving; warnings go to stderr."""
    source = source if isinstance(source, ConfigSource) else ConfigSource(source)
    config = source.load(_warn)
    if verbose:
        _say(f"the configuration file {source.path} syntax is ok")
    for server in config.servers:
        found = load_server_certificates(server.certificates)
        for ck in [*found.own, *found.files.values()]:
            for warning in expiry_warnings(ck) + key_permission_warnings(ck) + chain_warnings(ck):
                _say(warning, level="warn")
    read_key_files(config.sessions.ticket_key_file)
    try:
        from fastterm.config.plan import build
    except ImportError:
        # The Cython core is not built: the OpenSSL-level checks are skipped, not failed.
        return config
    build(config, source.toml_path)
    return config


def cmd_certs(args: argparse.Namespace) -> int:
    """List every certificate of a configuration: names, key, issuer, expiry, source, users."""
    source = _source(args)
    try:
        config = source.load(_warn)
    except (FasttermError, OSError) as exc:
        _say(str(exc), level="emerg")
        return 1
    entries = inventory(config.servers)
    _add_ocsp(config, entries)
    _add_acme(config, entries)
    if args.json:
        print(json.dumps(entries, indent=2))
        return 1 if any("error" in e for e in entries) else 0
    for e in entries:
        if "error" in e:
            print(f"{e['source']}\n  ERROR      {e['error']}\n  servers    {', '.join(e['servers'])}")
            continue
        left = "EXPIRED" if e["days_left"] < 0 else f"{e['days_left']} days left"
        print(f"{', '.join(e['names']) or '(no name)'}\n"
              f"  key        {e['key']}\n  issuer     {e['issuer']}\n  serial     {e['serial']}\n"
              f"  not after  {e['not_after']} ({left})\n  source     {e['source']}\n"
              f"  servers    {', '.join(e['servers'])}")
        ocsp = e.get("ocsp")
        if ocsp is not None:
            age = "" if ocsp["age"] is None else f", response {ocsp['age']:.0f} s old"
            refresh = "" if ocsp["next_refresh"] is None else f", next refresh in {ocsp['next_refresh']:.0f} s"
            error = f" ({ocsp['error']})" if ocsp.get("error") else ""
            print(f"  ocsp       {ocsp['status']}{age}{refresh}{error}")
        acme = e.get("acme")
        if acme is not None:
            print(f"  acme       {acme['challenge']} from {acme['directory']}"
                  f"{' (temporary self-signed until issued)' if acme['placeholder'] else ''}")
            upcoming = "next retry" if acme["last_error"] else "next renewal"
            print(f"  last try   {_when(acme['last_attempt'])}; {upcoming} {_when(acme['next_attempt'])}")
            if acme["last_error"]:
                print(f"  last error {acme['last_error']} ({acme['failures']} failures in a row)")
        for warning in e["warnings"]:
            print(f"  warning    {warning}")
    return 1 if any("error" in e for e in entries) else 0


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "never"
    from datetime import UTC, datetime

    left = timestamp - time.time()
    at = datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    span = abs(left)
    span_text = (f"{span / 86400:.0f} days" if span >= 2 * 86400 else f"{span / 3600:.0f} h" if span >= 7200
                 else f"{span:.0f} s")
    return f"{at} (in {span_text})" if left > 0 else f"{at} ({span_text} ago)"


def _add_acme(config: Config, entries: list[dict]) -> None:
    """The ACME agent's record (state_dir/state.json) of each name a block with acme has."""
    from fastterm.certs.acme import PLACEHOLDER_ORG, status_of

    by_source = {}
    for server in config.servers:
        if server.acme is None:
            continue
        for st in status_of(server):
            by_source[os.path.join(server.certificates[0].cert, st["name"] + ".pem")] = st
    for e in entries:
        st = by_source.get(e["source"].split(" + ")[0])
        if st is not None:
            e["acme"] = dict(st, placeholder=PLACEHOLDER_ORG in e.get("issuer", ""))


def _add_ocsp(config: Config, entries: list[dict]) -> None:
    """The running master's OCSP state of each certificate (its admin /status), where there is one."""
    if not config.admin:
        return
    try:
        status, body = _admin_request(config, "GET", "/status")
        staples = json.loads(body).get("ocsp", []) if status == 200 else []
    except (OSError, ValueError):
        return   # not running: the files alone
    by_names = {s["certificate"]: s for s in staples}
    for e in entries:
        found = by_names.get(", ".join(e.get("names", [])))
        if found is not None:
            e["ocsp"] = {k: found.get(k) for k in ("status", "age", "next_refresh", "error")}


def _source(args: argparse.Namespace) -> ConfigSource:
    if getattr(args, "nginx", None):
        return ConfigSource(args.nginx, "nginx")
    return ConfigSource(args.config)


def cmd_check(args: argparse.Namespace) -> int:
    source = _source(args)
    try:
        validate(source, verbose=True)
    except (FasttermError, OSError) as exc:
        _say(str(exc), level="emerg")
        _say(f"configuration file {source.path} test failed", failed=True)
        return 1
    _say(f"configuration file {source.path} test is successful")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    """The nginx configuration as the equivalent fastterm.toml, on stdout."""
    from fastterm.config.toml import dump_config

    source = _source(args)
    try:
        config = validate(source)
    except (FasttermError, OSError) as exc:
        _say(str(exc), level="emerg")
        return 1
    sys.stdout.write(f"# fastterm.toml converted from {os.path.abspath(source.path)} "
                     f"(fastterm convert {source.flag})\n\n" + dump_config(config))
    return 0


def _serve(source: ConfigSource | str, config: Config, single: bool = False) -> int:
    """Serve until stopped: a master with workers, or (``--single``) this process alone."""
    try:
        if single:
            from fastterm.certs.acme import AcmeAgent
            from fastterm.supervisor import raise_nofile_limit
            from fastterm.worker import run, setup_logging
            setup_logging(config)
            raise_nofile_limit()
            acme = AcmeAgent()   # its stdin closes with this process, and it exits
            acme.update(config)
            acme.tick()
            run(config)
        else:
            from fastterm.supervisor import run_master
            return run_master(source, config)
    except ImportError as exc:
        _say(f"cannot start: the Cython core is unavailable ({exc}); "
             "build it with `pip install -e .` or ./bootstrap", level="emerg")
        return 1
    except KeyboardInterrupt:
        pass
    except (FasttermError, OSError) as exc:
        _say(str(exc), level="emerg")
        return 1
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    source = _source(args)
    try:
        config = _with_pid_file(validate(source), args)
    except (FasttermError, OSError) as exc:
        _say(str(exc), level="emerg")
        return 1
    return _serve(source, config, args.single)


def _with_pid_file(config: Config, args: argparse.Namespace) -> Config:
    """``--pid-file`` wins over the config's (an nginx.conf's ``pid`` is nginx's own file)."""
    if getattr(args, "pid_file", None):
        import msgspec
        config = msgspec.structs.replace(config, pid_file=os.path.abspath(args.pid_file))
    return config


def _control_config(args: argparse.Namespace) -> Config:
    return _with_pid_file(_source(args).load(), args)


def _admin_credential(config: Config) -> str:
    """The header that authorizes a mutating call: on TCP the master's token, read from its
    0600 token file (readable by the master's user and root); on a unix socket the
    kernel's peer credentials do it, no header needed."""
    from fastterm.supervisor import token_file_of

    if config.admin.startswith("unix:"):
        return ""
    try:
        with open(token_file_of(config)) as f:
            return f"Authorization: Bearer {f.read().strip()}\r\n"
    except OSError:
        return ""    # the master answers 401, naming the file


def _admin_request(config: Config, method: str, path: str) -> tuple[int, str]:
    """One request to the master's admin endpoint (loopback or unix socket)."""
    from fastterm.config.toml import parse_address

    credential = _admin_credential(config) if method != "GET" else ""
    if config.admin.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30)
        try:
            sock.connect(config.admin[5:])
        except OSError:
            sock.close()
            raise
    else:
        sock = socket.create_connection(parse_address(config.admin, default_host="127.0.0.1"), timeout=30)
    with sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: fastterm\r\n{credential}Content-Length: 0\r\n"
                     "Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def cmd_reload(args: argparse.Namespace) -> int:
    """Validate first (like ``nginx -t && nginx -s reload``), then ask the master."""
    try:
        validate(_source(args))
        config = _control_config(args)
        if config.admin:
            status, body = _admin_request(config, "POST", "/reload")
            if status != 200:
                import json
                _say(f"reload refused: {json.loads(body).get('error')}", level="emerg")
                return 1
            _say(f"reloaded: {body.strip()}")
            return 0
        import signal

        from fastterm.supervisor import signal_master
        pid = signal_master(config, signal.SIGHUP)
        _say(f"sent SIGHUP to master {pid}")
        return 0
    except (FasttermError, OSError) as exc:
        _say(str(exc), level="emerg")
        return 1


def cmd_stop(args: argparse.Namespace) -> int:
    import signal

    from fastterm.supervisor import read_pid
    try:
        config = _control_config(args)
        pid = read_pid(config)
        os.kill(pid, signal.SIGQUIT if args.fast else signal.SIGTERM)
        deadline = time.monotonic() + (config.limits.drain_timeout + 5 if args.wait else 0)
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        _say(f"stopping master {pid}")
        return 0
    except (FasttermError, OSError) as exc:
        _say(str(exc), level="emerg")
        return 1


def cmd_status(args: argparse.Namespace) -> int:
    from fastterm.supervisor import read_pid
    try:
        config = _control_config(args)
        if config.admin:
            status, body = _admin_request(config, "GET", "/status")
            print(body, end="")
            return 0 if status == 200 else 1
        print(f"master {read_pid(config)} running (set `admin` for details)")
        return 0
    except (FasttermError, OSError) as exc:
        _say(str(exc), level="emerg")
        return 1


def cmd_keys(args: argparse.Namespace) -> int:
    from fastterm.keys import write_key_file
    try:
        write_key_file(args.file)
    except OSError as exc:
        _say(f"{args.file}: {exc.strerror}", level="emerg")
        return 1
    _say(f"wrote a new 80-byte session ticket key to {args.file}")
    return 0


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
        return _serve(ConfigSource(path), config)
    finally:
        stop_process(backend)


def cmd_bench(args: argparse.Namespace) -> int:
    from fastterm import bench

    return bench.main(args)


def _bench_arguments(parser: argparse.ArgumentParser) -> None:
    from fastterm import bench

    bench.add_arguments(parser)


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("-c", "--config", metavar="FILE", help="a fastterm.toml")
    which.add_argument("--nginx", metavar="FILE",
                       help="an nginx.conf (or a conf.d file of server blocks), read as nginx would")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="TLS terminator and HTTP/1.1 reverse proxy")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="validate a configuration and its certificates, like nginx -t")
    _config_arguments(check)
    check.set_defaults(func=cmd_check)
    convert = commands.add_parser("convert", help="print the fastterm.toml equivalent to an nginx configuration")
    convert.add_argument("--nginx", required=True, metavar="FILE", help="the nginx.conf (or conf.d file) to convert")
    convert.set_defaults(func=cmd_convert)
    run = commands.add_parser("run", help="validate then serve until SIGTERM/SIGINT")
    _config_arguments(run)
    run.add_argument("--pid-file", metavar="FILE", help="override the config's pid_file")
    run.add_argument("--single", action="store_true",
                     help="serve in this one process, no master or workers (debugging)")
    run.set_defaults(func=cmd_run)
    for name, func, text in (("reload", cmd_reload, "validate, then start a new generation of workers"),
                             ("stop", cmd_stop, "graceful stop (SIGTERM); --fast: SIGQUIT"),
                             ("status", cmd_status, "the master's status (admin endpoint or pid)")):
        sub = commands.add_parser(name, help=text)
        _config_arguments(sub)
        sub.add_argument("--pid-file", metavar="FILE", help="override the config's pid_file")
        if name == "stop":
            sub.add_argument("--fast", action="store_true")
            sub.add_argument("--wait", action="store_true", help="wait until the master has exited")
        sub.set_defaults(func=func)
    certs = commands.add_parser("certs", help="list the certificates a configuration serves, with expiry")
    _config_arguments(certs)
    certs.add_argument("--json", action="store_true", help="one JSON list instead of text")
    certs.set_defaults(func=cmd_certs)
    keys = commands.add_parser("keys", help="session ticket keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    new_key = key_commands.add_parser("new", help="write a fresh 80-byte key (nginx ssl_session_ticket_key format)")
    new_key.add_argument("file")
    new_key.set_defaults(func=cmd_keys)
    demo = commands.add_parser("demo",
                               help="serve a local demo: own CA, localhost certificates, echo backend")
    demo.add_argument("--state-dir", default=default_state_dir(), metavar="DIR",
                      help="where the CA, certificates and config live (default: $FASTTERM_STATE "
                           "or ~/.local/state/fastterm/demo)")
    demo.add_argument("--https-port", type=int, default=8443)
    demo.add_argument("--http-port", type=int, default=8080)
    demo.add_argument("--backend-port", type=int, default=8081)
    demo.set_defaults(func=cmd_demo)
    bench = commands.add_parser("bench", help="compare fastterm with nginx/HAProxy on this machine",
                                description="Load fastterm and the peers found installed (nginx, HAProxy, hitch) "
                                            "side by side on loopback; see fastterm/bench.py.")
    _bench_arguments(bench)
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
