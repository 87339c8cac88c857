"""Masking of e-mail and IP addresses, as FineWeb does before release.

Every e-mail address becomes ``email@example.com``; every valid IPv4 address becomes
``192.0.2.1`` and every IPv6 one ``2001:db8::1`` (addresses reserved for documentation by
RFC 5737 and RFC 3849, so the placeholders can never point at a real host).
"""
from __future__ import annotations

import ipaddress
import re

from .steps import BaseFilter, Document

EMAIL_RE = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}(?![\w-])"
)
IPV4_RE = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")
IPV6_RE = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")


class PiiMasker:
    name = "pii"

    def __init__(self, email=True, ip=True, email_replacement="email@example.com",
                 ipv4_replacement="192.0.2.1", ipv6_replacement="2001:db8::1"):
        self.email, self.ip = email, ip
        self.email_rep, self.v4_rep, self.v6_rep = email_replacement, ipv4_replacement, ipv6_replacement

    def __call__(self, text: str) -> tuple[str, int, int]:
        """(masked text, e-mails masked, IPs masked)."""
        n_email = n_ip = 0
        if self.email and "@" in text:
            text, n_email = EMAIL_RE.subn(self.email_rep, text)
        if self.ip:
            counts = [0]

            def v4(m):
                try:
                    ipaddress.IPv4Address(m.group(0))
                except ValueError:
                    return m.group(0)
                counts[0] += 1
                return self.v4_rep

            def v6(m):
                s = m.group(0)
                if s.count(":") < 2 or not any(c.isdigit() or c in "abcdefABCDEF" for c in s):
                    return s
                try:
                    ipaddress.IPv6Address(s)
                except ValueError:
                    return s
                counts[0] += 1
                return self.v6_rep

            if "." in text:
                text = IPV4_RE.sub(v4, text)
            if "::" in text or text.count(":") >= 7:
                text = IPV6_RE.sub(v6, text)
            n_ip = counts[0]
        return text, n_email, n_ip


class PiiMask(BaseFilter):
    """The pipeline step: masks every document's e-mail and IP addresses (never drops one);
    ``masked`` counts what it replaced."""

    name = "pii"

    def __init__(self, config, max_samples: int = 100):
        super().__init__(config, max_samples)
        self.masker = PiiMasker(config.email, config.ip, config.email_replacement, config.ipv4_replacement,
                                config.ipv6_replacement) if config.enabled else None
        self.masked = {"email": 0, "ip": 0}

    def filter(self, doc: Document):
        if self.masker is not None:
            doc.text, n_email, n_ip = self.masker(doc.text)
            self.masked["email"] += n_email
            self.masked["ip"] += n_ip
        return True
