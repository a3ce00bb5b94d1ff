"""Accounts: the ``account/`` part of software environment and configuration names."""

from __future__ import annotations

import getpass
import re

from coiled_core import config
from coiled_core.errors import ClusterSpecError

_ACCOUNT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


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
        if not isinstance(account, str) or not _ACCOUNT_PATTERN.match(account.lower()):
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
