"""Encryption at rest for cluster credentials.

Fernet (AES-128-CBC + HMAC) from `cryptography`, with MultiFernet so keys can be rotated: the first
key encrypts, every key decrypts.
"""

import base64
import hashlib
from functools import cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


@cache
def _fernet(keys: tuple[str, ...], secret_key: str) -> MultiFernet:
    if not keys:
        # Only reachable outside production (which requires explicit keys): derive a stable key so a
        # laptop install works without configuration.
        digest = hashlib.sha256(b"gpu-portal-credentials:" + secret_key.encode()).digest()
        keys = (base64.urlsafe_b64encode(digest).decode(),)
    try:
        return MultiFernet([Fernet(k) for k in keys])
    except ValueError as exc:
        raise ImproperlyConfigured(
            "PORTAL_CREDENTIALS_KEYS must be Fernet keys (32 url-safe base64 bytes)"
        ) from exc


def _current() -> MultiFernet:
    return _fernet(tuple(settings.PORTAL_CREDENTIALS_KEYS), settings.SECRET_KEY)


def encrypt(plaintext: str) -> str:
    return _current().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return _current().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        # Never include the token: even ciphertext in logs helps nobody and leaks key-rotation state.
        raise ImproperlyConfigured(
            "stored credentials cannot be decrypted with PORTAL_CREDENTIALS_KEYS"
        ) from exc
