"""The SIP source-trust core (no sockets): SIP_TRUSTED_PEERS parsing, the verdict per source and
method, the metric's method vocabulary, and the flood-safe refusal log."""

from __future__ import annotations

import ipaddress

import pytest

from bridge.errors import ConfigError
from bridge.settings import Settings
from bridge.telephony.sip.policy import (
    RefusalLog,
    SourcePolicy,
    Verdict,
    method_label,
    parse_ip,
    parse_trusted_peers,
    peek_method,
)
from bridge.telephony.sip.service import source_policy


def test_trusted_peers_parse_addresses_cidrs_and_ipv6() -> None:
    nets = parse_trusted_peers(" 10.0.0.5, 192.0.2.0/24,2001:db8::/32 ,[2001:db8:1::7],, ")
    assert [str(n) for n in nets] == ["10.0.0.5/32", "192.0.2.0/24", "2001:db8::/32", "2001:db8:1::7/128"]
    assert parse_trusted_peers(None) == ()
    assert parse_trusted_peers("") == ()


@pytest.mark.parametrize("entry", ["pbx.example.com", "10.0.0.300", "10.0.0.0/33", "2001:db8::/129", "*"])
def test_a_bad_trusted_peer_is_a_config_error_naming_it(entry: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_trusted_peers(f"10.0.0.1, {entry}")
    assert repr(entry) in str(err.value)
    assert "SIP_TRUSTED_PEERS" in str(err.value)


def test_a_cidr_with_host_bits_is_refused_with_the_network_suggested() -> None:
    with pytest.raises(ConfigError, match=r"did you mean 10\.0\.0\.0/8"):
        parse_trusted_peers("10.1.2.3/8")


def test_settings_with_a_bad_peer_fail_when_the_policy_is_built() -> None:
    settings = Settings(sip_server="127.0.0.1", sip_user="b", sip_trusted_peers="10.0.0.0/8,nope")
    with pytest.raises(ConfigError, match="'nope'"):
        source_policy(settings)


def test_registrar_addresses_and_peers_are_trusted_nothing_else() -> None:
    policy = SourcePolicy(peers=parse_trusted_peers("192.0.2.0/24, 2001:db8::/32"))
    assert not policy.trusts("203.0.113.9")  # registrar not resolved yet: only the peers
    assert policy.set_server_ips(["203.0.113.9", "2001:db8:ffff::1", "not-an-ip"])
    assert not policy.set_server_ips(["2001:db8:ffff::1", "203.0.113.9"])  # same set: unchanged
    for ok in (
        "203.0.113.9",
        "192.0.2.1",
        "192.0.2.255",
        "2001:db8::5",
        "2001:DB8:0::5",
        "::ffff:192.0.2.7",
        "2001:db8::1%eth0",
    ):
        assert policy.trusts(ok), ok
    for bad in ("203.0.113.10", "192.0.3.1", "2001:db9::1", "127.0.0.1", "::1", "garbage", ""):
        assert not policy.trusts(bad), bad
    # a new DNS answer replaces the old one
    assert policy.set_server_ips(["198.51.100.1"])
    assert not policy.trusts("203.0.113.9")
    assert policy.trusts("198.51.100.1")


def test_verdicts_reject_or_drop_and_responses_are_never_answered() -> None:
    reject = SourcePolicy(peers=parse_trusted_peers("10.0.0.1"), action="reject")
    drop = SourcePolicy(peers=parse_trusted_peers("10.0.0.1"), action="drop")
    for method in ("INVITE", "OPTIONS", "BYE", "CANCEL", "REFER", "NOTIFY", "MESSAGE", "FOO"):
        assert reject.verdict("10.0.0.1", method) is Verdict.SERVE
        assert reject.verdict("10.0.0.2", method) is Verdict.REJECT
        assert drop.verdict("10.0.0.2", method) is Verdict.DROP
    assert reject.verdict("10.0.0.1", None) is Verdict.SERVE  # a response from a trusted peer
    assert reject.verdict("10.0.0.2", None) is Verdict.DROP  # responses: ignored, never answered
    assert reject.verdict("10.0.0.2", "ACK") is Verdict.DROP  # an ACK is never answered
    assert reject.verdict("10.0.0.2", "") is Verdict.DROP  # unreadable request line


def test_open_policy_only_for_a_trunk_without_server_or_peers() -> None:
    assert source_policy(Settings(sip_user="lab")).open_to_all
    assert SourcePolicy(open_to_all=True).trusts("198.51.100.77")
    closed = source_policy(Settings(sip_user="lab", sip_trusted_peers="10.0.0.0/8"))
    assert not closed.open_to_all
    assert not closed.trusts("198.51.100.77")
    assert closed.trusts("10.9.9.9")
    reg = source_policy(
        Settings(sip_server="pbx.example", sip_user="u", sip_password="p", sip_untrusted_action="drop")
    )
    assert not reg.open_to_all
    assert reg.action == "drop"
    assert not reg.trusts("10.9.9.9")


def test_method_label_is_a_fixed_vocabulary() -> None:
    assert method_label("INVITE") == "INVITE"
    assert method_label("MESSAGE") == "MESSAGE"
    assert method_label(None) == "response"
    assert method_label("XYZZY") == "other"
    assert method_label("INVITE2") == "other"
    assert peek_method(b"INVITE sip:x SIP/2.0\r\n") == "INVITE"
    assert peek_method(b"message sip:x SIP/2.0\r\n") == "MESSAGE"
    assert peek_method(b"SIP/2.0 200 OK\r\n") is None
    assert peek_method(b"\x00\x01garbage") == ""


def test_parse_ip_normalises_sources() -> None:
    assert parse_ip("::ffff:10.1.2.3") == ipaddress.ip_address("10.1.2.3")
    assert parse_ip("[2001:db8::1]") == ipaddress.ip_address("2001:db8::1")
    assert parse_ip("fe80::1%eth0") == ipaddress.ip_address("fe80::1")
    assert parse_ip("host.example") is None


def test_refusal_log_reports_the_first_per_source_then_summarises_a_flood() -> None:
    log = RefusalLog(window_s=60.0, first_per_window=3)
    assert log.record("198.51.100.1", 0.0) == (True, None)
    lines = [log.record("198.51.100.1", 0.001 * i) for i in range(1, 10_000)]  # one source flooding
    assert not any(first for first, _ in lines)
    assert not any(summary for _, summary in lines)
    # a spoofed flood from many sources: only `first_per_window` new sources are logged per window
    firsts = sum(log.record(f"10.0.{i // 256}.{i % 256}", 10.0)[0] for i in range(5000))
    assert firsts == 2
    first, summary = log.record("198.51.100.1", 61.0)
    assert not first  # already reported
    assert summary is not None
    assert summary.startswith("14997 more SIP datagrams from")
    assert "from 4096+ untrusted source(s)" in summary  # the set of sources is bounded
    assert log.record("198.51.100.1", 62.0) == (False, None)  # one summary per window
    assert log.record("203.0.113.5", 62.0) == (True, None)  # a new source in the new window
