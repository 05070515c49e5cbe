"""Reading the machine's apt sources and deriving the private `deb-src` list for the TimescaleDB build."""

from __future__ import annotations

import pytest

from localstack import StackError, install
from localstack.install import AptSource, deb_src_lines, install_commands, parse_deb822, parse_one_line

# /etc/apt/sources.list.d/debian.sources as Debian 12 container images ship it
DEBIAN_SOURCES = """Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
# http://snapshot.debian.org/archive/debian-security/20250520T000000Z
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


def test_the_release_mirror_is_taken_and_the_security_mirror_left_out() -> None:
    assert parse_deb822(DEBIAN_SOURCES) == [AptSource("http://mirror.example/debian", KEYRING)]


def test_the_private_list_adds_only_a_source_entry_for_the_newer_suite() -> None:
    text = deb_src_lines(parse_deb822(DEBIAN_SOURCES))
    assert text == f"deb-src [signed-by={KEYRING}] http://mirror.example/debian trixie main\n"


def test_disabled_stanzas_and_binary_only_mirrors_without_a_base_suite_are_skipped() -> None:
    text = (
        "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm\nComponents: main\nEnabled: no\n\n"
        "Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\nComponents: main\n\n"
        "Types: deb deb-src\nURIs: http://a.example/debian/ http://b.example/debian\nSuites: bookworm\n"
        "Components: main\n"
    )
    assert [s.uri for s in parse_deb822(text)] == ["http://a.example/debian", "http://b.example/debian"]
    assert all(s.signed_by is None for s in parse_deb822(text))


def test_the_one_line_format_is_understood() -> None:
    text = (
        "# comment\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main contrib\n"
        "deb http://m.example/debian-security bookworm-security main\n"
        "deb-src http://m.example/debian bookworm main\n"
        "deb http://other.example/debian/ bookworm main # trailing\n"
    )
    assert parse_one_line(text) == [
        AptSource("http://m.example/debian", "/k.gpg"),
        AptSource("http://other.example/debian", None),
    ]


def test_duplicate_mirrors_give_one_line_each() -> None:
    source = AptSource("http://m.example/debian", None)
    assert deb_src_lines([source, source], suite="trixie") == "deb-src http://m.example/debian trixie main\n"


def test_install_commands_name_every_package() -> None:
    assert install_commands(["mosquitto", "redis-server"])[-1] == (
        "sudo apt-get install -y --no-install-recommends mosquitto redis-server"
    )


def test_without_root_missing_packages_become_instructions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(install, "is_root", lambda: False)
    monkeypatch.setattr(install, "missing_packages", lambda names: ["redis-server"])
    with pytest.raises(StackError) as caught:
        install.ensure_installed(log=lambda _m: None)
    assert "sudo apt-get install -y --no-install-recommends redis-server" in str(caught.value)
    assert "fleet stack install" in str(caught.value)
