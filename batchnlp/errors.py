"""One exception tree. The CLI turns a `UserError` into one line and exit status 2;
anything else is a bug in batchnlp and exits 1 with a traceback."""


class BatchNLPError(Exception):
    """Base of every error batchnlp raises on purpose."""


class UserError(BatchNLPError):
    """Something the user can fix: the job spec, the input, the model, the output directory."""


class SpecError(UserError):
    """The job spec is invalid. The message starts with the key at fault."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}" if key else message)


class InputError(UserError):
    """The input data cannot be read as declared. The message names the file (and row where known)."""


class ModelUnavailableError(UserError):
    """The model cannot be found or loaded (offline hub, missing package, bad directory)."""


class OutputConflictError(UserError):
    """The output directory holds another job's output, or is locked by a running job."""


class OutputBusyError(OutputConflictError):
    """Another live run holds the output (its lock or lease): try again later. The CLI exits 75
    (EX_TEMPFAIL), so a scheduler can tell "busy" from "broken" (2)."""


class RunFailed(BatchNLPError):
    """The run failed in a worker (a Ray actor): not the user's to fix, but reported in one line
    naming the original exception (exit status 1), the committed parts kept."""
