"""Which addresses an ``image_url`` may reach: checked on the addresses themselves, with no
connection made (the fetch through a real server is in test_clip_retrieval.py)."""

from __future__ import annotations

import ipaddress

import pytest

from app.service.image_urls import PublicOnly, RefusedAddress, is_public

NOT_PUBLIC = [
    # IPv4 ranges
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "127.0.0.1",
    "169.254.169.254",
    "100.64.0.1",
    "0.0.0.0",
    "224.0.0.1",
    "255.255.255.255",
    "192.0.2.1",
    "198.18.0.1",
    # IPv6 ranges
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "fd12:3456::1",
    "ff02::1",
    "2001:db8::1",
    # deprecated: site-local, IPv4-compatible
    "fec0::1",
    "feff::1",
    "::127.0.0.1",
    "::10.0.0.1",
    "::8.8.8.8",
    # IPv4 carried in IPv6: mapped, NAT64 (both prefixes), 6to4, Teredo
    "::ffff:127.0.0.1",
    "::ffff:169.254.169.254",
    "::ffff:10.1.2.3",
    "64:ff9b::a9fe:a9fe",
    "64:ff9b::a00:1",
    "64:ff9b::7f00:1",
    "64:ff9b:1::a9fe:a9fe",
    "2002:7f00:1::1",
    "2002:a9fe:a9fe::1",
    "2002:c0a8:101::1",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "2606:4700:4700::1111",
          "64:ff9b::808:808", "2002:808:808::1", "::ffff:8.8.8.8"]  # fmt: skip


@pytest.mark.parametrize("address", NOT_PUBLIC)
def test_private_addresses_in_every_form_are_refused(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


def test_the_backend_refuses_before_connecting_and_honours_allowed_networks() -> None:
    with pytest.raises(RefusedAddress, match="not public"):
        PublicOnly([]).connect_tcp("::ffff:127.0.0.1", 9, timeout=1)
    with pytest.raises(RefusedAddress, match="not public"):
        PublicOnly([]).connect_tcp("64:ff9b::a9fe:a9fe", 80, timeout=1)
    # Allowed by the operator: the check lets it through to the connection (a closed
    # loopback port here, refused by the kernel, not by the check).
    allowed = [ipaddress.ip_network("127.0.0.0/8")]
    with pytest.raises(Exception) as caught:
        PublicOnly(allowed).connect_tcp("127.0.0.1", 9, timeout=1)
    assert not isinstance(caught.value, RefusedAddress)
