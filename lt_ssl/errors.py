"""Errors a user can act on, each mapped to a process exit code that Argo's retryStrategy reads."""

from __future__ import annotations

# Exit codes. Argo retries only what a retry can fix: `asInt(lastRetry.exitCode) != 2 && != 3`.
EXIT_OK = 0
EXIT_UNEXPECTED = 1  # a bug or an unknown failure: retried (it may be a flaky node)
EXIT_BAD_INPUT = 2  # config, data, URI or checkpoint the user must fix: never retried
EXIT_COLLAPSE = 3  # training collapsed deterministically: never retried
EXIT_REGRESSED = 4  # `lt-ssl compare`: a metric dropped beyond tolerance (fails the cron workflow, no retry)
EXIT_UNAVAILABLE = 69  # `lt-ssl submit`: the cluster could not be reached (EX_UNAVAILABLE); try later
EXIT_STORAGE = 74  # storage unreachable or failing (EX_IOERR): retried with backoff
EXIT_PREEMPTED = 75  # SIGTERM or Ctrl-C received, checkpoint written (EX_TEMPFAIL): retried, resumes


class LtSslError(Exception):
    """Base class: the message is one line naming what is wrong and what to do."""

    exit_code = EXIT_BAD_INPUT


class ConfigError(LtSslError):
    """A config file, key, value or override is wrong."""


class DataError(LtSslError):
    """A dataset is missing, corrupt, unsafe or has the wrong shape/labels."""


class RunUriError(LtSslError):
    """A run URI or artifact key is malformed or escapes its run prefix."""


class CheckpointError(LtSslError):
    """A checkpoint is not a checkpoint, or belongs to another architecture."""


class StageError(LtSslError):
    """A stage cannot run: missing inputs, unknown cluster id, a run with another config."""


class RunBusyError(LtSslError):
    """Another runner holds the run: two runners on one run would write the same artifacts."""

    @classmethod
    def held_by(cls, uri: str, holder: str) -> RunBusyError:
        return cls(f"{uri} is in use by {holder}; wait for it to end (or stop it), then rerun to resume")


class StorageError(LtSslError):
    """The artifact store failed (unreachable endpoint, bad credentials, missing bucket)."""

    exit_code = EXIT_STORAGE


class StorageAccessError(StorageError):
    """The store refused the credentials, or the bucket does not exist: only a user can fix it."""

    exit_code = EXIT_BAD_INPUT


class CollapseError(LtSslError):
    """Representations collapsed (std of normalised outputs fell towards 0)."""

    exit_code = EXIT_COLLAPSE


class Preempted(LtSslError):
    """SIGTERM or Ctrl-C arrived; a checkpoint was written and the stage should be retried."""

    exit_code = EXIT_PREEMPTED
