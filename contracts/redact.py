"""One redaction path for secrets, applied to every log record, stored error text and CLI message.

Two nets, both applied by ``redact``:
- **values**: every secret the process resolved (``SecretRef.resolve`` registers what it returns
  with ``remember``) is replaced wherever it appears, in any form it was given;
- **shapes**: text that looks like a secret whatever its origin: the password in a URL's user
  info (``postgresql://app:…@db``), ``password=…`` in a libpq DSN, a Slack webhook's path, Slack
  tokens (``xoxb-…``) and ``Bearer`` headers.

``install_log_redaction`` puts ``redact`` into the log-record factory, so that every logger (ours,
slack_sdk's, kafka-python's, Faust's) and every handler sees only redacted messages and tracebacks.
"""

from __future__ import annotations

import logging
import re
import threading

MASK = "***"
MIN_SECRET_LEN = 4  # shorter values would mask ordinary words

_known: set[str] = set()
_lock = threading.Lock()

_SHAPES: list[tuple[re.Pattern[str], str]] = [
    # scheme://user:password@host -> scheme://user:***@host (an empty user too; a password holding
    # '@' is masked up to the last '@' before the path)
    (re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s/:@'\"]*:)[^\s/'\"]*@"), rf"\g<1>{MASK}@"),
    # key=value, key: value, "key": "value" where the key names a secret (db_password, access_token,
    # client_secret, PGPASSWORD, api_key ...); a {env: ...} reference is not a secret
    (re.compile(r"""(?i)(\b[\w.-]*(?:password|passwd|pwd|secret|token|api_?key)[\w-]*["']?\s*[=:]\s*)"""
                r"""(?!\{)("[^"]*"|'[^']*'|[^\s,;&'"}]+)"""), rf"\g<1>{MASK}"),
    # HTTP authorization headers
    (re.compile(r"(?i)(\bBearer\s+|\bauthorization:\s*Basic\s+)[A-Za-z0-9._~+/=-]+"), rf"\g<1>{MASK}"),
    # Slack incoming-webhook paths and workflow triggers
    (re.compile(r"(https?://hooks\.slack(?:-gov)?\.com/)[^\s'\"<>]+"), rf"\g<1>{MASK}"),
    # Slack tokens: bot, user, app-level, refresh, configuration
    (re.compile(r"\bxox[abeoprs]-[A-Za-z0-9-]+|\bxapp-[A-Za-z0-9-]+"), f"xox-{MASK}"),
]


_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` safe for a terminal: control characters (ANSI escapes among them) shown as ``\\xNN``,
    newlines and tabs kept.  For anything that echoes what an input said (a provider name, a page)."""
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def one_line(text: str) -> str:
    """``printable``, newlines escaped too: for a value quoted inside a line (a provider name)."""
    return printable(text).replace("\n", "\\n").replace("\t", "\\t")


def remember(secret: str | None) -> str | None:
    """Register a secret value so that ``redact`` masks it from now on; returns it unchanged."""
    if secret and len(secret) >= MIN_SECRET_LEN:
        with _lock:
            _known.add(secret)
    return secret


def redact(text: str) -> str:
    """``text`` with every remembered secret and every secret-shaped substring masked."""
    if not text:
        return text
    with _lock:
        known = sorted(_known, key=len, reverse=True)  # longest first: a secret containing another
    for secret in known:
        if secret in text:
            text = text.replace(secret, MASK)
    for pattern, replacement in _SHAPES:
        text = pattern.sub(replacement, text)
    return text


_installed = False


def install_log_redaction() -> None:
    """Redact every log record as it is created: its message (arguments merged in) and its
    traceback.  Idempotent."""
    global _installed
    if _installed:
        return
    make_record = logging.getLogRecordFactory()

    def redacted_record(*args, **kwargs) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: logging reports it later; keep the raw text
            message = str(record.msg)
        # args () not None: Faust's formatter (mode's ExtensionFormatter) turns None into (None,), and the
        # record would then fail to format ("not all arguments converted") and be lost
        record.msg, record.args = printable(redact(message)), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return record

    logging.setLogRecordFactory(redacted_record)
    _installed = True
