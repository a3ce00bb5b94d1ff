"""Accounts and ``account/name`` names: of software environments and cluster configurations.

Both are kept in the store as ``<prefix>/<account>/<name>.json`` documents; this module lists
them and suggests the names a user may have meant.
"""

from __future__ import annotations

import difflib
import getpass
import re
from typing import TYPE_CHECKING

from coiled_core import config
from coiled_core.errors import ClusterSpecError

if TYPE_CHECKING:
    from coiled_core.store import Store

#: A normalised account: the part before the ``/``.
ACCOUNT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
#: A normalised name within an account: the part after the ``/``.
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
#: The parts of a stored document's ``account/name``, whatever their length: each kind of
#: document checks its own limits when it is created.
_STORED_ACCOUNT = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_STORED_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


def _sanitise_user(user: str) -> str:
    account = re.sub(r"[^a-z0-9_-]+", "-", user.lower())
    account = re.sub(r"^[^a-z0-9]+", "", account)[:63].rstrip("-_")
    return account or "user"


def default_account() -> str:
    """The account of bare names: dask config ``coiled.account``, else the user's name.

    The user name is lowercased and every run of characters other than letters, digits, ``-``
    and ``_`` becomes ``-`` (``"Jane.Doe"`` -> ``"jane-doe"``). Raises
    :class:`~coiled_core.errors.ClusterSpecError` if ``coiled.account`` is set but invalid.
    """
    account = config.get("account")
    if account is not None:
        if not isinstance(account, str) or not ACCOUNT_PATTERN.fullmatch(account.lower()):
            raise ClusterSpecError(
                f"dask config 'coiled.account' is {account!r}, which is not a valid account name; use up to "
                "63 letters, digits, '-' and '_', starting with a letter or digit"
            )
        return account.lower()
    try:
        user = getpass.getuser()
    except (OSError, KeyError, ImportError):  # no user name in the environment or the password database
        user = "user"
    return _sanitise_user(user)


def stored_names(store: Store, prefix: str, account: str | None = None) -> list[str]:
    """The ``account/name`` of every ``<prefix>/<account>/<name>.json`` document in ``store``.

    Only ``account`` when given. Anything else under ``prefix`` (a file being written,
    ``<name>.json.tmp-<pid>``, or a foreign one) is skipped.
    """
    accounts = [account] if account is not None else [a for a in store.list(prefix) if _STORED_ACCOUNT.fullmatch(a)]
    names = []
    for acct in accounts:
        for filename in store.list(f"{prefix}/{acct}"):
            short = filename[: -len(".json")]
            if filename.endswith(".json") and _STORED_NAME.fullmatch(short):
                names.append(f"{acct}/{short}")
    return names


def close_names(full_name: str, known: list[str]) -> list[str]:
    """Up to three ``account/name`` names of ``known`` that ``full_name`` may have meant.

    First the same name in other accounts, then names spelled alike as a whole, then names
    spelled alike in any account.
    """
    short = full_name.partition("/")[2]
    by_short: dict[str, list[str]] = {}
    for name in known:
        by_short.setdefault(name.partition("/")[2], []).append(name)
    found = list(by_short.get(short, []))
    found += difflib.get_close_matches(full_name, known, n=3, cutoff=0.6)
    for close_short in difflib.get_close_matches(short, list(by_short), n=3, cutoff=0.6):
        found += by_short[close_short]
    return [name for name in dict.fromkeys(found) if name != full_name][:3]
