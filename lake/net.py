"""Which connections take a proxy from the environment (``HTTP_PROXY``/``HTTPS_PROXY``/``NO_PROXY``)."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

__all__ = ["hide_credentials", "is_loopback", "proxy_from_env"]

_USERINFO = re.compile(r"(?<=//)[^/@\s]+@")


def hide_credentials(text: str) -> str:
    """``text`` with the user and password of every URL in it (``https://user:pass@host/``) hidden:
    a mirror's credentials in a base URL reach error messages and log lines with the URL."""
    return _USERINFO.sub("…@", text)


def proxy_from_env(*urls: str) -> bool:
    """Whether connections to ``urls`` honour the proxy variables, as the websockets library does by
    default: yes, except for a server on this machine (the simulator of ``lake demo`` and the tests,
    a local mirror). A proxy set for the outside world would otherwise have to be told about
    127.0.0.1 in ``NO_PROXY``, and the demo would fail on such a machine."""
    return not any(is_loopback(u) for u in urls if u)


def is_loopback(url: str) -> bool:
    """Whether ``url`` names a server on this machine (localhost, 127.0.0.0/8, ::1)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
