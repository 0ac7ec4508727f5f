"""Network policy for fetching: which URLs and addresses may be contacted, what logs may show, which
credentials go where, and how Hugging Face links map onto mirror endpoints.

Server-side request forgery is the risk: a workflow (shared by someone else) names a URL, and the machine running
ComfyUI fetches it. So only http(s) is allowed, every hop's resolved address must be public unless the user allows
private ones, cloud metadata addresses are never contacted, and signed query strings never reach a log.
"""

from __future__ import annotations

import calendar
import datetime
import ipaddress
import os
import re
import socket
import urllib.parse
from dataclasses import dataclass

ALLOWED_SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}
# Cloud instance-metadata services: never contacted, even with private addresses allowed (AWS/GCP/Azure/OpenStack
# 169.254.169.254, AWS IPv6 fd00:ec2::254, Alibaba 100.100.100.200).
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
HF_OFFICIAL = "https://huggingface.co"


class PolicyError(ValueError):
    """A URL or address is refused by the network policy; the message says why and what setting changes it."""


# ---- URLs ---------------------------------------------------------------------------------------------------------
def check_url(url: str) -> urllib.parse.SplitResult:
    """Parse `url`, refusing anything but http(s) with a host name."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme.lower() not in ALLOWED_SCHEMES:
        raise PolicyError(
            f"{redact_url(url)}: only http:// and https:// links can be fetched (got {parts.scheme or 'no'} scheme)"
        )
    if not parts.hostname:
        raise PolicyError(f"{redact_url(url)}: the link has no host name")
    return parts


def url_port(parts: urllib.parse.SplitResult) -> int:
    """The port a URL connects to (explicit or the scheme's default)."""
    try:
        return parts.port or DEFAULT_PORTS[parts.scheme.lower()]
    except ValueError:
        raise PolicyError(f"{redact_url(parts.geturl())}: invalid port") from None


def redact_url(url: str) -> str:
    """The URL with user info and every query value hidden: signed links carry secrets in their query string."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc.rsplit("@", 1)[-1]
    if "@" in parts.netloc:
        netloc = "***@" + netloc
    pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    query = "&".join(f"{key}=***" for key, _ in pairs)
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def url_key(url: str) -> str:
    """The URL without query, fragment and user info: two signed links to one object share it."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(
        (
            parts.scheme.lower(),
            (parts.hostname or "").lower() + (f":{parts.port}" if parts.port else ""),
            parts.path,
            "",
            "",
        )
    )


# ---- addresses ----------------------------------------------------------------------------------------------------
def address_refusal(address: str, *, allow_private: bool) -> str | None:
    """Why `address` may not be contacted, or None when it may."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    mapped = getattr(ip, "ipv4_mapped", None)
    if mapped is not None:
        ip = mapped
    if ip in METADATA_ADDRESSES:
        return f"{ip} is a cloud metadata address (never fetched)"
    if ip.is_global and not ip.is_multicast:
        return None
    if allow_private and not (ip.is_multicast or ip.is_unspecified):
        return None
    kind = next(
        (
            label
            for label, flag in (
                ("loopback", ip.is_loopback),
                ("link-local", ip.is_link_local),
                ("private", ip.is_private),
                ("multicast", ip.is_multicast),
            )
            if flag
        ),
        "non-public",
    )
    hint = "" if kind == "multicast" else "; set allow_private_addresses to fetch from your own network"
    return f"{ip} is a {kind} address{hint}"


def resolve_allowed(host: str, port: int, *, allow_private: bool) -> list[tuple]:
    """Resolve `host` and return the socket addresses that the policy allows (raises PolicyError if none)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConnectionError(f"cannot resolve host {host!r}: {exc.strerror or exc}") from None
    allowed, refusals = [], []
    for family, _type, proto, _name, sockaddr in infos:
        why = address_refusal(sockaddr[0], allow_private=allow_private)
        if why is None:
            allowed.append((family, proto, sockaddr))
        else:
            refusals.append(why)
    if not allowed:
        raise PolicyError(f"host {host!r} refused: {refusals[0]}")
    return allowed


# ---- credentials --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Credential:
    """A bearer token bound to exactly one host name: it is never sent anywhere else, nor logged."""

    host: str
    token: str

    def header_for(self, url: str) -> dict[str, str]:
        """The Authorization header when `url` is on this credential's host, else nothing."""
        if (urllib.parse.urlsplit(url).hostname or "").lower() == self.host.lower():
            return {"Authorization": f"Bearer {self.token}"}
        return {}

    def __repr__(self) -> str:  # never print the token
        return f"Credential(host={self.host!r}, token='***')"


# ---- signed links -------------------------------------------------------------------------------------------------
_EXPIRED_BODY = re.compile(
    rb"request has expired|expiredtoken|token (?:has )?expired|signature (?:has )?expired|signed expiry time|"
    rb"url (?:has )?expired|link (?:has )?expired|expired signature|accessdenied.{0,200}expire",
    re.IGNORECASE | re.DOTALL,
)


def _parse_time(text: str) -> datetime.datetime | None:
    text = text.strip()
    for fmt in ("%Y%m%dT%H%M%SZ", "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%d"):
        try:
            return datetime.datetime.strptime(text, fmt).replace(tzinfo=datetime.UTC)
        except ValueError:
            continue
    return None


def signed_url_expiry(url: str) -> datetime.datetime | None:
    """When a signed link stops working, read from its query (AWS SigV4, GCS, CloudFront/`Expires`, Azure SAS)."""
    query = {k.lower(): v for k, v in urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query)}
    for date_key, seconds_key in (("x-amz-date", "x-amz-expires"), ("x-goog-date", "x-goog-expires")):
        start = _parse_time(query.get(date_key, ""))
        if start is not None and query.get(seconds_key, "").isdigit():
            return start + datetime.timedelta(seconds=int(query[seconds_key]))
    for epoch_key in ("expires", "exp", "e"):
        value = query.get(epoch_key, "")
        if value.isdigit() and len(value) >= 9:
            return datetime.datetime.fromtimestamp(int(value), tz=datetime.UTC)
    if "se" in query:  # Azure SAS "signed expiry"
        return _parse_time(query["se"])
    return None


def expiry_note(url: str, status: int, body: bytes, now: datetime.datetime | None = None) -> str | None:
    """For a 401/403 answer: a sentence saying the signed link expired (and when), or None if nothing says so."""
    if status not in (400, 401, 403):
        return None
    now = now or datetime.datetime.now(datetime.UTC)
    expiry = signed_url_expiry(url)
    body_says = bool(_EXPIRED_BODY.search(body[:65536]))
    if expiry is not None and expiry <= now:
        return (
            f"the signed link expired at {expiry:%Y-%m-%d %H:%M} UTC ({_ago(now - expiry)} ago); ask for a fresh link"
        )
    if body_says:
        return "the server says the link's signature expired; ask for a fresh link"
    return None


def _ago(delta: datetime.timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} s"


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A `Retry-After` header (seconds or an HTTP date) as seconds from now; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    from email.utils import parsedate_tz

    parsed = parsedate_tz(value)
    if parsed is None:
        return None
    import time

    moment = calendar.timegm(parsed[:9]) - (parsed[9] or 0)
    return max(0.0, moment - (time.time() if now is None else now))


# ---- Hugging Face -------------------------------------------------------------------------------------------------
def hf_endpoints(configured: list[str] | None = None) -> list[str]:
    """Endpoints for Hugging Face files: the configured list, else `HF_ENDPOINT` (a mirror) then the official."""
    found = list(configured or [])
    if not found:
        if os.environ.get("HF_ENDPOINT"):
            found.append(os.environ["HF_ENDPOINT"])
        found.append(HF_OFFICIAL)
    cleaned: list[str] = []
    for endpoint in found:
        endpoint = endpoint.strip().rstrip("/")
        if endpoint and endpoint not in cleaned:
            cleaned.append(endpoint)
    return cleaned


_HF_SCHEME = re.compile(r"^hf://(?P<repo>[^/@\s]+/[^/@\s]+)(?:@(?P<rev>[^/\s]+))?/(?P<path>\S+)$")
_HF_PATH = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/(?:resolve|blob)/(?P<rev>[^/]+)/(?P<path>.+)$")


def hf_file_path(url: str, endpoints: list[str]) -> str | None:
    """`org/repo/resolve/rev/path` for an `hf://` link or a link on one of `endpoints`; None for other links."""
    match = _HF_SCHEME.match(url.strip())
    if match:
        return f"{match['repo']}/resolve/{match['rev'] or 'main'}/{match['path']}"
    parts = urllib.parse.urlsplit(url.strip())
    hosts = {urllib.parse.urlsplit(e).netloc.lower() for e in endpoints} | {"huggingface.co", "www.huggingface.co"}
    if parts.netloc.lower() not in hosts:
        return None
    match = _HF_PATH.match(parts.path)
    if not match:
        return None
    return f"{match['repo']}/resolve/{match['rev']}/{match['path']}"


def expand_hf(url: str, endpoints: list[str]) -> list[str]:
    """One URL -> the URLs to try: the same file on every Hugging Face endpoint, or just the URL itself."""
    path = hf_file_path(url, endpoints)
    if path is None:
        if url.strip().startswith("hf://"):
            raise PolicyError(
                f"{url}: write Hugging Face links as hf://org/repo/path/file or hf://org/repo@rev/path/file"
            )
        return [url.strip()]
    query = urllib.parse.urlsplit(url).query if not url.startswith("hf://") else ""
    return [f"{endpoint}/{path}" + (f"?{query}" if query else "") for endpoint in endpoints]
