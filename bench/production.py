"""The settings every benchmark runs its servers and workers with: production's, as measured figures
should be (DEBUG off: no query log, no debug cursor), over plain HTTP on loopback."""

from __future__ import annotations

import secrets

from cryptography.fernet import Fernet


def production_settings_env() -> dict[str, str]:
    return {
        "DJANGO_DEBUG": "0",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "FIELD_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "SECURE_SSL_REDIRECT": "0",
    }
