"""User names for uids, from the system's user database, cached per process."""

from __future__ import annotations

import pwd


class UserNames:
    """uid -> user name, cached: a name service lookup per process would be slow."""

    def __init__(self) -> None:
        self._cache: dict[int, str] = {}

    def __call__(self, uid: int | None) -> str:
        """The name of ``uid``; the number itself when it has none; ``?`` for None."""
        if uid is None:
            return "?"
        name = self._cache.get(uid)
        if name is None:
            try:
                name = pwd.getpwuid(uid).pw_name
            except KeyError:
                name = str(uid)
            self._cache[uid] = name
        return name


USER_NAMES = UserNames()
