"""Active health checks without sockets: the rise/fall counting, the expect parser, the
config checks, and the shared table the workers read."""

import pytest

from fastterm.config.model import HealthCheck
from fastterm.health import ServerHealth, check_problems, parse_expect


def test_a_server_starts_up_and_falls_after_fall_failures_in_a_row():
    state = ServerHealth(rise=2, fall=3)
    assert state.up
    assert [state.record(False) for _ in range(2)] == [False, False] and state.up
    assert state.record(False) and not state.up


def test_a_success_between_failures_starts_the_count_again():
    state = ServerHealth(rise=2, fall=3)
    for ok in (False, False, True, False, False):
        assert not state.record(ok)
    assert state.up
    assert state.record(False) and not state.up


def test_a_down_server_rises_after_rise_successes_in_a_row():
    state = ServerHealth(rise=2, fall=1)
    assert state.record(False) and not state.up
    assert not state.record(True)
    assert not state.record(False)        # the streak is broken
    assert not state.record(True)
    assert state.record(True) and state.up


def test_rise_and_fall_of_one_change_at_once():
    state = ServerHealth(rise=1, fall=1)
    assert state.record(False) and not state.up
    assert state.record(True) and state.up


@pytest.mark.parametrize("text, ranges", [
    ("200", ((200, 200),)),
    ("200-399", ((200, 399),)),
    ("200-299, 301,302", ((200, 299), (301, 301), (302, 302))),
])
def test_expect_parses_statuses_and_ranges(text, ranges):
    assert parse_expect(text) == ranges


@pytest.mark.parametrize("text", ["", "2xx", "399-200", "200-", "99", "600", "200;300", "-200"])
def test_expect_refuses_what_is_not_a_status_range(text):
    with pytest.raises(ValueError, match="invalid expect"):
        parse_expect(text)


@pytest.mark.parametrize("fields, key", [
    ({"rise": 0}, "rise"), ({"fall": 0}, "fall"), ({"interval": 0.0}, "interval"),
    ({"timeout": -1.0}, "timeout"), ({"expect": "ok"}, "expect"), ({"path": "health"}, "path"),
    ({"host": "a b"}, "host"),
])
def test_check_problems_name_the_field(fields, key):
    assert [k for k, _ in check_problems(HealthCheck(**fields))] == [key]


def test_the_defaults_are_valid():
    assert check_problems(HealthCheck()) == []


def test_the_table_counts_each_return_to_up():
    from fastterm._core import HealthTable

    table = HealthTable()
    assert table.up(7) and table.word(7) == 0
    table.set(7, False)
    table.set(7, False)
    assert not table.up(7) and table.word(7) == 1
    table.set(7, True)
    table.set(7, True)
    assert table.up(7) and table.word(7) == 2     # came up once
    table.reset(7)
    assert table.word(7) == 0
    with pytest.raises(ValueError):
        table.set(HealthTable.capacity, True)


def test_a_pool_skips_a_server_the_check_marked_down_and_clears_its_ejection_when_it_rises():
    from fastterm._core import HealthTable, UpstreamPool

    table = HealthTable()
    pool = UpstreamPool("app", [("127.0.0.1", 1), ("127.0.0.1", 2)])
    pool.set_health(table, [0, 1])
    table.set(1, False)
    assert {pool.choose(100.0) for _ in range(4)} == {0}
    table.set(0, False)
    assert pool.choose(100.0) == -1                     # every server down: no connect at all
    pool.failed(1, 100.0)                               # passive ejection too
    assert pool.ejected(100.0) == [("127.0.0.1", 2)]
    table.set(1, True)
    assert pool.choose(100.5) == 1
    assert pool.ejected(100.5) == []                    # the active check brought it back


def test_backup_servers_serve_when_the_check_took_every_primary_down():
    from fastterm._core import HealthTable, UpstreamPool

    table = HealthTable()
    pool = UpstreamPool("app", [("127.0.0.1", 1), ("127.0.0.1", 2)])
    pool.set_balancing([1, 1], [False, True], [1, 1], [10.0, 10.0], False)
    pool.set_health(table, [0, 1])
    assert pool.choose(1.0) == 0
    table.set(0, False)
    assert pool.choose(1.0) == 1


@pytest.mark.parametrize("check, needle, message", [
    ("rise = 0", "rise", "rise must be 1 or more"),
    ("fall = 0", "fall", "fall must be 1 or more"),
    ("interval = 0", "interval", "interval must be more than 0"),
    ("timeout = -1", "timeout", "timeout must be more than 0"),
    ('expect = "2xx"', "expect", "invalid expect"),
    ('kind = "udp"', "kind", "udp"),
])
def test_a_bad_check_is_a_config_error_at_its_line(write, check, needle, message):
    from fastterm.config.toml import load_config
    from fastterm.errors import ConfigError

    text = f"""
[[upstream]]
name = "app"
servers = ["127.0.0.1:9001"]
[upstream.check]
{check}

[[server]]
listen = ["127.0.0.1:8443"]
[[server.route]]
path = "/"
upstream = "app"
"""
    with pytest.raises(ConfigError, match=message) as info:
        load_config(write("fastterm.toml", text))
    line = next(i for i, ln in enumerate(text.splitlines(), start=1) if ln.startswith(needle))
    assert info.value.line == line and "fastterm.toml" in str(info.value)


def _checker_run(checker, selector, until, limit: float = 5.0) -> bool:
    """The master's loop in small: select, dispatch, tick; until ``until()`` or ``limit`` s."""
    import time

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and not until():
        for key, events in selector.select(timeout=0.05):
            key.data(events)
        checker.tick()
    return until()


def test_the_checker_takes_a_closed_server_down_and_a_reload_keeps_what_it_keeps():
    import selectors
    import socket
    from types import SimpleNamespace

    from fastterm._core import HealthTable, UpstreamPool

    from fastterm.config.model import Upstream
    from fastterm.health import HealthChecker

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    check = HealthCheck(interval=0.05, timeout=0.5, rise=1, fall=2)
    config = SimpleNamespace(upstreams=[Upstream("app", [f"127.0.0.1:{port}"], check=check)])

    def plan():
        return SimpleNamespace(pools={"app": UpstreamPool("app", [("127.0.0.1", port)])})

    selector = selectors.DefaultSelector()
    table = HealthTable()
    checker = HealthChecker(selector, table)
    try:
        checker.attach(config, plan())
        assert _checker_run(checker, selector, lambda: checker.report()[0]["checks"] >= 2)
        assert checker.report()[0]["up"] and checker.report()[0]["failures"] == 0
        listener.close()
        assert _checker_run(checker, selector, lambda: not checker.report()[0]["up"])
        assert "refused" in checker.report()[0]["last_error"]
        slot = checker.targets[("app", "127.0.0.1", port)].slot
        assert not table.up(slot)
        checker.attach(config, plan())                       # a reload with the same server: still down
        assert not checker.report()[0]["up"] and not table.up(slot)
        checker.attach(SimpleNamespace(upstreams=[]), plan())
        assert checker.report() == []
        checker.attach(config, plan())                       # checked anew: up at first, same slot
        assert checker.report()[0]["up"] and table.up(slot)
        assert checker.targets[("app", "127.0.0.1", port)].slot == slot
    finally:
        checker.close()
        selector.close()


def test_haproxy_server_check_checks_only_the_servers_that_say_it_with_their_own_parameters():
    """``server ... check inter=S rise=N fall=N`` (HAProxy's words): only those servers are
    checked, with their own values over [upstream.check]'s (or HAProxy's defaults without one)."""
    import selectors
    from types import SimpleNamespace

    from fastterm._core import HealthTable, UpstreamPool

    from fastterm.config.model import Upstream
    from fastterm.config.toml import parse_upstream_server
    from fastterm.health import HealthChecker

    spec = parse_upstream_server("10.0.0.10:3000 check inter=0.5s rise=4 fall=5")
    assert (spec.check, spec.inter, spec.rise, spec.fall) == (True, 0.5, 4, 5)
    for bad in ("a:1 rise=0", "a:1 inter=0", "a:1 inter=x", "a:1 fall=-1"):
        with pytest.raises(ValueError):
            parse_upstream_server(bad)
    servers = ["127.0.0.1:1 check rise=4", "127.0.0.1:2", "127.0.0.1:3 check inter=0.5"]
    config = SimpleNamespace(upstreams=[Upstream("app", servers)])
    pool = UpstreamPool("app", [("127.0.0.1", 1), ("127.0.0.1", 2), ("127.0.0.1", 3)])
    selector = selectors.DefaultSelector()
    checker = HealthChecker(selector, HealthTable())
    try:
        checker.attach(config, SimpleNamespace(pools={"app": pool}))
        checks = {port: t.check for (_, _, port), t in checker.targets.items()}
        assert sorted(checks) == [1, 3]
        assert (checks[1].kind, checks[1].interval, checks[1].rise, checks[1].fall) == ("tcp", 2.0, 4, 3)
        assert (checks[3].interval, checks[3].rise) == (0.5, 2)
        table_config = SimpleNamespace(upstreams=[Upstream("app", servers, check=HealthCheck(kind="http", fall=7))])
        checker.attach(table_config, SimpleNamespace(pools={"app": pool}))
        assert {port: (t.check.kind, t.check.fall) for (_, _, port), t in checker.targets.items()} == \
            {1: ("http", 7), 3: ("http", 7)}
    finally:
        checker.close()
        selector.close()
