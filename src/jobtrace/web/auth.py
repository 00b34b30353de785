"""Credentials for the standalone dashboard, from the environment.

``JOBTRACE_WEB_TOKEN`` is sent as ``Authorization: Bearer TOKEN`` by scripts, or typed as the
password (any user name) in the browser's login prompt; ``JOBTRACE_WEB_USER`` with
``JOBTRACE_WEB_PASSWORD`` is plain HTTP basic authentication. Use HTTPS in front of it: basic
authentication sends the secret with every request. A host that mounts the WSGI app brings its
own authentication instead.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["PASSWORD_ENV", "TOKEN_ENV", "USER_ENV", "Credentials"]

TOKEN_ENV = "JOBTRACE_WEB_TOKEN"
USER_ENV = "JOBTRACE_WEB_USER"
PASSWORD_ENV = "JOBTRACE_WEB_PASSWORD"
#: What the browser's login prompt says.
REALM = "jobtrace"


@dataclass(frozen=True)
class Credentials:
    """What a request must present: a token, a user and password, or either."""

    token: str | None = field(default=None, repr=False)
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if (self.user is None) != (self.password is None):
            raise ValueError(f"set both {USER_ENV} and {PASSWORD_ENV}, or neither")
        if not (self.token or self.password):
            raise ValueError("credentials need a token or a user and a password")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Credentials | None:
        """The credentials the environment sets, ``None`` when it sets none.

        Raises:
            ValueError: Only one of the user and the password is set.
        """
        env = os.environ if environ is None else environ
        token = env.get(TOKEN_ENV) or None
        user = env.get(USER_ENV) or None
        password = env.get(PASSWORD_ENV) or None
        if token is None and user is None and password is None:
            return None
        return cls(token, user, password)

    def accept(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header carries these credentials (compared in constant time)."""
        if not authorization:
            return False
        scheme, _, value = authorization.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer":
            return self.token is not None and _same(value, self.token)
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, sep, password = decoded.partition(":")
        if not sep:
            return False
        if self.token is not None and _same(password, self.token):
            return True
        if self.user is None or self.password is None:
            return False
        # Both compared whatever the first says: no timing hint of which one was wrong.
        return _same(user, self.user) & _same(password, self.password)

    @property
    def challenge(self) -> str:
        """The ``WWW-Authenticate`` header that makes a browser ask for them."""
        return f'Basic realm="{REALM}", charset="UTF-8"'


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))
