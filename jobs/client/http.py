"""Requests that carry the cluster token, and the addresses they may go to.

A token is a key to the cluster (the Jobs API runs any command), so an address is parsed
strictly before anything is sent: http(s)://HOST[:PORT] where HOST is a DNS name or an IP
literal, nothing else (no userinfo, no backslash, no path), because HTTP clients disagree about
odd URLs (`http://evil.example\\@127.0.0.1` names 127.0.0.1 to urllib and evil.example to
requests). No request with the token follows a redirect: urllib and requests both copy the
Authorization header to the new location.
"""

from __future__ import annotations

import http.client
import ipaddress
import re
import urllib.error
import urllib.request
from dataclasses import dataclass

from modresnet.errors import UserError

_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_CHARS = re.compile(r"[A-Za-z0-9.:/\[\]-]+")
_URL = re.compile(
    r"(?P<scheme>https?)://(?P<host>\[[0-9A-Fa-f:.]+\]|[^\[\]/:]+)(?::(?P<port>\d{1,5}))?/?"
)


class RedirectError(UserError):
    """A token-bearing request was answered with a redirect, which is never followed."""


@dataclass(frozen=True)
class Address:
    scheme: str
    host: str  # a DNS name (lower case) or an IP literal, without brackets
    port: int | None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}" + (f":{self.port}" if self.port is not None else "")


def parse_address(address: str) -> Address:
    """http(s)://HOST[:PORT], HOST a DNS name or an IP literal; ValueError says what is wrong."""
    if not _CHARS.fullmatch(address):
        bad = sorted({c for c in address if not _CHARS.fullmatch(c)})
        raise ValueError(f"{''.join(bad)!r} not allowed (no userinfo, path, query or spaces)")
    m = _URL.fullmatch(address)
    if m is None:
        raise ValueError("not a scheme, host and port alone")
    host = m["host"]
    port = int(m["port"]) if m["port"] else None
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"port {port} is not in 1..65535")
    if host.startswith("["):
        try:
            ip = ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"{host} is not an IPv6 address") from None
        return Address(m["scheme"], str(ip), port)
    try:
        return Address(m["scheme"], str(ipaddress.IPv4Address(host)), port)
    except ValueError:
        pass
    name = host.lower().removesuffix(".")
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"{host!r} is neither a DNS name nor an IP address")
    if labels[-1].isdigit():  # 127.1, 2130706433: IPv4 to some resolvers, a name to others
        raise ValueError(f"{host!r} is neither a DNS name nor a dotted-quad IPv4 address")
    return Address(m["scheme"], name, port)


def is_loopback(host: str) -> bool:
    """`localhost` or a literal loopback IP (127.0.0.0/8, ::1): only these never leave this
    machine. Any other name may resolve anywhere tomorrow."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip in ipaddress.IPv4Network("127.0.0.0/8") or ip == ipaddress.IPv6Address("::1")


def redirect_error(url: str, code: int, location: str | None) -> RedirectError:
    return RedirectError(
        f"{url} answered with a redirect (HTTP {code}) to {location or '?'}; the token is "
        f"never sent on through a redirect: pass the final Jobs API address with --address"
    )


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises the 3xx as an HTTPError


def get(url: str, token: str | None, timeout: float) -> tuple[int, bytes]:
    """GET with `Authorization: Bearer <token>` (when given): (status, body) for any answer but
    a redirect, which raises RedirectError naming the Location. OSError when unreachable or
    when what answers does not speak HTTP."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.build_opener(_NoRedirect).open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        if 300 <= err.code < 400:
            raise redirect_error(url, err.code, err.headers.get("Location")) from None
        return err.code, err.read()
    except http.client.HTTPException as err:
        raise OSError(f"not an HTTP answer ({type(err).__name__})") from None
