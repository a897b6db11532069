"""One exception tree. The CLI turns a `UserError` into one line and exit status 2;
anything else is a bug in batchnlp and exits 1 with a traceback."""

import errno
import signal


class BatchNLPError(Exception):
    """Base of every error batchnlp raises on purpose."""


class UserError(BatchNLPError):
    """Something the user can fix: the job spec, the input, the model, the output directory."""


class SpecError(UserError):
    """The job spec is invalid. The message starts with the key at fault."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}" if key else message)


class SpecProblems(SpecError):
    """Several problems of one job, found in one pass (`problems`: each a UserError naming its key
    or file). Its own message is the first, saying how many more there are (`validate` prints them
    all)."""

    def __init__(self, problems: list[UserError]):
        flat = [q for p in problems for q in (p.problems if isinstance(p, SpecProblems) else [p])]
        self.problems = flat
        self.key = getattr(flat[0], "key", "")
        more = f" (and {len(flat) - 1} more: batchnlp validate lists them)" if len(flat) > 1 else ""
        UserError.__init__(self, f"{flat[0]}{more}")


def collect(problems: list[UserError]) -> None:
    """Raise what was collected: nothing, the one problem, or all of them."""
    if len(problems) == 1 and not isinstance(problems[0], SpecProblems):
        raise problems[0]
    if problems:
        raise SpecProblems(problems)


class InputError(UserError):
    """The input data cannot be read as declared. The message names the file (and row where known)."""


class ModelUnavailableError(UserError):
    """The model cannot be found or loaded (offline hub, missing package, bad directory)."""


class OutputConflictError(UserError):
    """The output directory holds another job's output, or is locked by a running job."""


class OutputBusyError(OutputConflictError):
    """Another live run holds the output (its lock or lease): try again later. The CLI exits 75
    (EX_TEMPFAIL), so a scheduler can tell "busy" from "broken" (2)."""


class StoreUnavailable(UserError):
    """An object store kept failing (unreachable, timing out, 5xx) for runtime.retry_seconds; the
    message names what was asked and the last error."""


class RunFailed(BatchNLPError):
    """The run failed in a worker (a Ray actor): not the user's to fix, but reported in one line
    naming the original exception (exit status 1), the committed parts kept."""


#: Exit statuses: a user error (one line), a run that finished but skipped changed input files
#: (output.on_changed: skip), another live run holds the output (EX_TEMPFAIL: try later).
USER_ERROR, SKIPPED, BUSY = 2, 3, 75


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and (error.errno == errno.ENOSPC or "No space left on device" in str(error))


def exit_code(error: BaseException) -> int:
    """The status the CLI exits with for an error that ended a command."""
    if isinstance(error, KeyboardInterrupt):
        return 128 + getattr(error, "signum", signal.SIGINT)
    if isinstance(error, OutputBusyError):
        return BUSY
    if isinstance(error, UserError) or is_disk_full(error):
        return USER_ERROR
    return 1
