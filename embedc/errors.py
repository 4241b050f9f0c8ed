"""Typed errors. Library code raises these; only the CLI turns them into a
one-line message and an exit code (0 ok, 1 error, 2 usage, 3 parity gate)."""
from __future__ import annotations


class EmbedcError(Exception):
    """Base error: ``message`` names the problem, ``hint`` the fix."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(EmbedcError):
    """Bad arguments or spec values: the user must change the invocation."""

    exit_code = 2


class SpecError(UsageError):
    """A build spec key or value is invalid."""


class ModelSourceError(EmbedcError):
    """A model cannot be found, read or trusted."""


class UnsupportedArchitectureError(ModelSourceError):
    """The model's architecture has no adapter."""


class MissingDependencyError(EmbedcError):
    """An optional package (an extra) is not installed."""


class OutputExistsError(EmbedcError):
    """The output location exists and --force was not given."""


class OutputLocationError(EmbedcError):
    """The output location cannot be written."""


class ExportError(EmbedcError):
    """torch -> ONNX export failed."""


class ExportValidationError(ExportError):
    """The exported ONNX does not match PyTorch within tolerance."""


class CorpusError(EmbedcError):
    """A calibration / evaluation corpus is empty, unreadable or too narrow."""


class TargetError(UsageError):
    """Unknown target or precision, or an unsupported combination."""


class CompileError(EmbedcError):
    """A backend failed to produce an artifact."""


class ArtifactError(EmbedcError):
    """An artifact folder is missing files, corrupted or inconsistent."""


class ParityGateError(EmbedcError):
    """One or more parity gates failed."""

    exit_code = 3


class DiskFullError(EmbedcError):
    """The disk filled up while writing (nothing half-written is left behind)."""


class InterruptedBuildError(EmbedcError):
    """The build was stopped by a signal (SIGINT or SIGTERM); nothing was replaced."""

    def __init__(self, signum: int):
        import signal as _signal

        self.signum = signum
        self.exit_code = 128 + signum
        name = _signal.Signals(signum).name
        super().__init__(f"interrupted by {name}: nothing was replaced (earlier results are intact)")
