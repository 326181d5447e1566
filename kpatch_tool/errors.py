"""One exception family; each error carries the exit code documented in README.md."""

from __future__ import annotations

# Exit codes (DESIGN.md); the CLI returns these, tests assert them.
EXIT_OK = 0
EXIT_SMOKE = 1
EXIT_USAGE = 2
EXIT_APPLY = 3
EXIT_CONFIG = 4
EXIT_BUILD = 5
EXIT_BOOT = 6
EXIT_PREREQ = 7


class KptError(Exception):
    """An error the user can act on: one line, naming the thing at fault."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, *, detail: str | None = None, exit_code: int | None = None):
        super().__init__(message)
        self.message = message
        # Multi-line context (a report, log tail) printed below the one-line message.
        self.detail = detail
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(KptError):
    exit_code = EXIT_USAGE


class SmokeFailed(KptError):
    exit_code = EXIT_SMOKE


class ApplyError(KptError):
    exit_code = EXIT_APPLY


class ConfigError(KptError):
    exit_code = EXIT_CONFIG


class BuildError(KptError):
    exit_code = EXIT_BUILD


class BootError(KptError):
    exit_code = EXIT_BOOT


class PrereqError(KptError):
    exit_code = EXIT_PREREQ
