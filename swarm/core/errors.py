"""The errors swarm raises on purpose.

Every error a user can cause derives from :class:`SwarmError`. The CLI catches it, prints ``error: <message>``
on one line and exits with :attr:`SwarmError.exit_code`; anything else is a bug and shows its traceback.

Errors cross Ray process boundaries, so each one pickles: it keeps its constructor arguments in ``self.args``
(as psycopg's errors do) and builds its message from them.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_ROLLED_BACK = 3
#: Completed, but its validation was INCONCLUSIVE: the rollout is held at 0% and decommission refused.
EXIT_HELD = 4
#: Paused by an outage (every migrator gone, the database away): nothing was thrown away; orchestrate resumes it.
EXIT_PAUSED = 5


class SwarmError(Exception):
    """Base of every error swarm raises on purpose."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (self.__class__, self.args)


class ConfigError(SwarmError):
    """A configuration value is wrong: names the key, the value and the fix."""

    exit_code = EXIT_USAGE

    def __init__(self, key: str, value: object, hint: str) -> None:
        shown = value if isinstance(value, (int, float)) or value is None else repr(value)
        super().__init__(f"{key} = {shown}: {hint}")
        self.args = (key, value, hint)
        self.key, self.value, self.hint = key, value, hint


class UsageError(SwarmError):
    """The command line or the input is wrong."""

    exit_code = EXIT_USAGE


class ModelError(SwarmError):
    """A model file cannot be used: names the path and the reason."""

    exit_code = EXIT_USAGE

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.args = (str(path), reason)
        self.path, self.reason = str(path), reason


class DimensionMismatch(ModelError):
    """A model's embedding length differs from what the config or the column says."""

    def __init__(self, path: str, expected: int, actual: int, where: str = "[embedding].dimension") -> None:
        reason = (
            f"embedding length is {actual} but {where} is {expected}; "
            f"set {where.split('.')[-1] if '.' in where else 'dimension'} = {actual} or use a {expected}-dim model"
        )
        SwarmError.__init__(self, f"{path}: {reason}")
        self.args = (str(path), expected, actual, where)
        self.path, self.reason = str(path), reason
        self.expected, self.actual, self.where = expected, actual, where


class DatabaseError(SwarmError):
    """The database is unreachable, or a table or column is not what the config says."""

    exit_code = EXIT_USAGE


class DatabaseUnavailable(DatabaseError):
    """Not one connection to the database could be opened in time (the server is away or refuses)."""

    exit_code = EXIT_FAILED


class Overloaded(SwarmError):
    """No database connection came free in time: the search was shed, nothing was opened beyond the pool.

    ``swarm serve`` answers 503 with ``Retry-After``; an application may retry after a short pause.
    """

    exit_code = EXIT_FAILED


class MigrationError(SwarmError):
    """A migration could not go on (a shard failed past its retries, a gate failed, ...)."""

    exit_code = EXIT_FAILED


class RolledBack(SwarmError):
    """The migration was rolled back; the legacy column is as it was."""

    exit_code = EXIT_ROLLED_BACK
