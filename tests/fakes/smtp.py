"""A real SMTP server for tests: aiosmtpd on 127.0.0.1:<free port>, in the test's event loop.

It keeps what it accepted (envelope and raw bytes) and can be scripted the way real servers
misbehave: a DATA reply such as ``451 4.3.0 Try again later`` or ``550 5.7.1 Rejected``, a
recipient refused at RCPT, AUTH against a user table (with the mechanisms a test chooses), and
STARTTLS or implicit TLS with a certificate from a test CA (trustme).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

__all__ = ["Accepted", "SmtpFake"]


@dataclass
class Accepted:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes  # the message exactly as the client sent it after DATA

    @property
    def message(self) -> EmailMessage:
        parsed = message_from_bytes(self.data, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


class SmtpFake:
    """``async with SmtpFake() as smtp``: ``smtp.port``; ``smtp.accepted`` holds the mail."""

    def __init__(
        self,
        *,
        users: dict[str, str] | None = None,
        mechanisms: tuple[str, ...] = ("LOGIN", "PLAIN"),
        starttls: ssl.SSLContext | None = None,
        implicit_tls: ssl.SSLContext | None = None,
    ) -> None:
        self.users = users
        self.mechanisms = mechanisms
        self.starttls = starttls
        self.implicit_tls = implicit_tls
        self.port = 0
        self.accepted: list[Accepted] = []
        self.logins: list[tuple[str, str, bool]] = []  # (mechanism, login, succeeded)
        self.offered: list[Accepted] = []  # every message sent after DATA, whatever the answer
        self._data_replies: deque[str] = deque()
        self._rcpt_replies: dict[str, str] = {}
        self._server: asyncio.Server | None = None

    def reply_to_data(self, reply: str, times: int = 1) -> None:
        """The next ``times`` DATA commands get ``reply`` (e.g. ``451 4.3.0 Try again later``)."""
        self._data_replies.extend([reply] * times)

    def refuse(self, address: str, reply: str) -> None:
        """Every RCPT TO this address gets ``reply`` (e.g. ``550 5.1.1 No such user``)."""
        self._rcpt_replies[address.lower()] = reply

    def accept(self, address: str) -> None:
        """Stop refusing ``address``."""
        self._rcpt_replies.pop(address.lower(), None)

    # -- aiosmtpd handler hooks -----------------------------------------------------------------

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = self._rcpt_replies.get(address.lower())
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        offered = Accepted(str(envelope.mail_from), list(envelope.rcpt_tos), data)
        self.offered.append(offered)
        if self._data_replies:
            return self._data_replies.popleft()
        self.accepted.append(offered)
        return "250 2.0.0 Message accepted for delivery"

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword) or self.users is None:
            return AuthResult(success=False, handled=False)
        login, password = auth_data.login.decode(), auth_data.password.decode()
        ok = self.users.get(login) == password
        self.logins.append((mechanism, login, ok))
        return AuthResult(success=ok, handled=False)

    # -- server ---------------------------------------------------------------------------------

    def _protocol(self) -> SMTP:
        auth: dict[str, Any] = {}
        if self.users is not None:
            excluded = [m for m in ("LOGIN", "PLAIN") if m not in self.mechanisms]
            auth = {
                "authenticator": self._authenticate,
                "auth_exclude_mechanism": excluded,
                # aiosmtpd only counts STARTTLS as TLS; plaintext AUTH is allowed only where the
                # test asks for it (implicit TLS, or no TLS at all).
                "auth_require_tls": self.starttls is not None,
            }
        return SMTP(
            self,
            hostname="mx.fake.test",
            tls_context=self.starttls,
            require_starttls=self.starttls is not None,
            **auth,
        )

    async def __aenter__(self) -> SmtpFake:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol, "127.0.0.1", 0, ssl=self.implicit_tls
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
