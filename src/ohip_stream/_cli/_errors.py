"""The library's error messages in the command line's vocabulary.

The library speaks of keyword arguments (``lock_dir=``, ``verify=``, ``chain_code``); a user of
``ohip-stream`` has options and ``OHIP_*`` variables instead. :func:`cli_message` rewrites the
names a user cannot type into the ones they can, and drops advice about keywords that have no
command-line form (``standby=True``, ``allow_insecure=True``).
"""

from __future__ import annotations

import re

from ohip_stream._exceptions import AuthenticationError, OhipError

__all__ = ["cli_message", "os_error_message"]

# Clauses that recommend a keyword the command line does not have: dropped.
_DROPPED = (
    re.compile(r",? or run this one with standby=True[^;.]*"),
    re.compile(r",? or pass allow_insecure=True[^;.]*"),
)

# (pattern, replacement), applied in order; the longer names first.
_RENAMES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"\bstandby=True\b", "standby mode (a library option; the command line has none)"),
        (r"\bNewEventInput\.chainCode\b", "the chain code (--chain-code or OHIP_CHAIN_CODE)"),
        (r"\bNewEventInput\.offset\b", "the offset"),
        (r"\bNewEventInput\.hotelCode\b", "the hotel code"),
        (r"\bset lock_dir= \(or OHIP_LOCK_DIR\)", "set --lock-dir (or OHIP_LOCK_DIR)"),
        (r"\block_dir=(?= )", "--lock-dir (or OHIP_LOCK_DIR)"),
        (r"\block_dir\b=?", "--lock-dir (or OHIP_LOCK_DIR)"),
        (r"\bpass verify= with\b", "pass --ca-file (or OHIP_CA_FILE) with"),
        (r"\bverify=", "--ca-file (or OHIP_CA_FILE) "),
        (r"\bssl CA file\b", "--ca-file (OHIP_CA_FILE)"),
        (r"\bapp_key=?(?= is required)", "OHIP_APP_KEY"),
        (r"\bapp_key=", "OHIP_APP_KEY"),
        (r"\bchain_code\b=?", "the chain code (--chain-code or OHIP_CHAIN_CODE)"),
        (r"<gateway_url>", "<OHIP_GATEWAY_URL>"),
        (r"\bcheck gateway_url\b", "check --gateway-url (or OHIP_GATEWAY_URL)"),
        (r"\bgateway_url\b=?", "the gateway URL (--gateway-url or OHIP_GATEWAY_URL)"),
        (r"\benterprise_id\b=?", "the enterprise id (--enterprise-id or OHIP_ENTERPRISE_ID)"),
        (r"\bclient_id= and client_secret=", "OHIP_CLIENT_ID and OHIP_CLIENT_SECRET"),
        (r"\bclient_id\b=?", "OHIP_CLIENT_ID (or --client-id)"),
        (r"\bclient_secret\b=?", "OHIP_CLIENT_SECRET"),
        (r"\bproxy=", "--proxy (or OHIP_PROXY)"),
        (r"\bstart_at_highest\b", "--from-highest"),
    )
)

# A 401 from the token endpoint: the client is unknown, or its secret or the application key
# sent with it is wrong; the gateway does not say which.
_CREDENTIALS_HINT = re.compile(
    r"check the client id and secret(?: \(and the username and password for the password "
    r"grant\))?"
)
_CREDENTIALS_CLI = (
    "check OHIP_CLIENT_ID, OHIP_CLIENT_SECRET and OHIP_APP_KEY (and OHIP_USERNAME and "
    "OHIP_PASSWORD for the password grant)"
)
# The gateway's own description of a 401 may name the application key.
_MENTIONS_APP_KEY = re.compile(r"(?i)\b(?:x-)?app[- _]?key\b")
_APP_KEY_CLI = "check OHIP_APP_KEY: the application key registered for this environment"


def cli_message(error: BaseException) -> str:
    """The message of a library error, with the command line's names for what it mentions."""
    text = str(error)
    if not isinstance(error, OhipError):
        return text
    for pattern in _DROPPED:
        text = pattern.sub("", text)
    if isinstance(error, AuthenticationError):
        hint = _APP_KEY_CLI if _MENTIONS_APP_KEY.search(text) else _CREDENTIALS_CLI
        text = _CREDENTIALS_HINT.sub(hint, text)
    for pattern, replacement in _RENAMES:
        text = pattern.sub(replacement, text)
    return text


def os_error_message(error: OSError) -> str:
    """One line for an operating-system error, with advice that fits its cause."""
    reason = error.strerror or str(error)
    name = error.filename
    where = f" ({name})" if name and len(str(name)) < 120 else ""
    # Only errors about a path point at the paths; "address already in use" and the like do not.
    path_errors = (PermissionError, FileNotFoundError, IsADirectoryError, NotADirectoryError)
    if isinstance(error, path_errors):
        return f"{reason}{where}: check the paths given"
    return f"{reason}{where}"
