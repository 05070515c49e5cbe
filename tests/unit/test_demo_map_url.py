"""`make demo` prints the map page's address with the key where no server log will see it."""

from __future__ import annotations

from fleet.demo import map_url


def test_the_key_travels_in_the_fragment() -> None:
    url = map_url("http://127.0.0.1:8088", "flt_0123456789ab_secret")
    assert url == "http://127.0.0.1:8088/map#key=flt_0123456789ab_secret"
    assert "?" not in url  # a query string would reach the server and its access log
