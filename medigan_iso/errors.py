"""Every exception medigan_iso raises, in one hierarchy.

This module owns the error types and nothing else: it imports nothing from the rest of the package but
:mod:`medigan_iso.untrusted` (model text in messages is neutralised here), so every layer may raise from
it. Each class carries the data a caller needs to act (as attributes) and a message that ends with a
remedy. Third-party exceptions (requests, json, jsonschema, subprocess) are translated once, at the
boundary that sees them, with ``raise ... from exc``.

    MediganIsoError                      base; ``remedy`` says what to do next
    ├── CatalogueError
    │   ├── CatalogueSourceError         a catalogue file/URL cannot be read or is not JSON
    │   ├── CatalogueValidationError     entries break the JSON Schema (every violation, with its path)
    │   ├── UnknownModelError            an id resolves to no entry (close matches attached)
    │   └── ConfigKeyError               a dotted config key is missing from a model's entry
    ├── PackageError
    │   ├── PackageDownloadError         a model package cannot be downloaded
    │   ├── PackageIntegrityError        a package's hash differs from the catalogue's
    │   ├── UnsafeArchiveError           a zip is refused by safe_extract (nothing was written)
    │   ├── PackageLayoutError           a package has no importable generate function / model file
    │   └── UnpinnedPackageError         a package has no (valid) pinned sha256 and the policy needs one
    ├── EnvError
    │   ├── ResolutionError              uv cannot resolve the model's requirements
    │   │   └── DirectReferenceError     a catalogue dependency 'name @ url' that is not allowed
    │   ├── InterpreterNotFoundError     no interpreter satisfies the entry's python_requires
    │   ├── EnvBuildError                installing a resolved env failed
    │   └── EnvNotBuiltError             no env exists and building one was not allowed
    ├── RunnerError
    │   ├── ProtocolError                a malformed or oversized frame crossed the pipe
    │   ├── RunnerStartError             the runner could not be started or did not say hello
    │   ├── RunnerTimeoutError           a runner clock (ready, inactivity) ran out
    │   ├── RunnerCrashedError           the runner process died (exit code or signal, stderr tail)
    │   ├── ModelError                   the model's own code raised (remote type and traceback)
    │   └── ResourceLimitError           the runner hit a limit (memory, processes, output bytes)
    ├── OutputExistsError                a file to be written already exists in the output folder
    ├── ProvenanceError                  a folder's manifest.jsonl / run.json is missing or unreadable
    ├── SandboxError                     a required confinement layer is unavailable
    │   └── SandboxPolicyError           a sandbox policy value is not off, auto or require
    ├── ContributionError                a model contribution cannot go ahead (entry, folder, confirmation)
    │   ├── ModelTestError               the contributed package failed its test in its own env
    │   └── RemoteServiceError           Zenodo or GitHub answered with an error or could not be reached
    └── ExploreError                     the web explorer cannot start or refused a request
        ├── ExploreRequestError          a request's parameters are malformed or out of range (HTTP 400)
        └── ModelBusyError               a model already has its maximum of waiting requests (HTTP 429)

Never shadow builtins: there is no ``TimeoutError`` or ``EnvironmentError`` here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medigan_iso.untrusted import neutralise

# Caps on model-supplied text carried in messages (issue 16: a 4 MiB error message or stderr tail must not
# reach a terminal whole, nor drive it).
TYPE_NAME_MAX_CHARS = 200
REMOTE_MESSAGE_MAX_CHARS = 4000
TRACEBACK_MAX_CHARS = 20000
STDERR_TAIL_MAX_CHARS = 8000

__all__ = [
    "BundleError",
    "CatalogueError",
    "CatalogueSourceError",
    "CatalogueValidationError",
    "ConfigKeyError",
    "ContributionError",
    "DirectReferenceError",
    "EnvBuildError",
    "EnvError",
    "EnvNotBuiltError",
    "ExploreError",
    "ExploreRequestError",
    "InterpreterNotFoundError",
    "MediganIsoError",
    "ModelBusyError",
    "ModelError",
    "ModelTestError",
    "OutputExistsError",
    "PackageDownloadError",
    "PackageError",
    "PackageIntegrityError",
    "PackageLayoutError",
    "ProtocolError",
    "ProvenanceError",
    "RemoteServiceError",
    "ResolutionError",
    "ResourceLimitError",
    "RunnerCrashedError",
    "RunnerError",
    "RunnerStartError",
    "RunnerTimeoutError",
    "SandboxError",
    "SandboxPolicyError",
    "UnknownModelError",
    "UnpinnedPackageError",
    "UnsafeArchiveError",
]


class MediganIsoError(Exception):
    """Base of every medigan_iso error. ``str(err)`` is the message followed by the remedy."""

    def __init__(self, message: str, *, remedy: str | None = None) -> None:
        self.message = message
        self.remedy = remedy
        super().__init__(message if not remedy else f"{message}\n  -> {remedy}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Ray (and multiprocessing) carry errors between our own worker processes by pickling them; the
        # subclasses take other constructor arguments than ``args``, so rebuild from the state instead.
        return (_rebuild_error, (type(self), self.args, dict(self.__dict__)))


def _rebuild_error(
    cls: type[MediganIsoError], args: tuple[Any, ...], state: dict[str, Any]
) -> MediganIsoError:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


# --- catalogue -------------------------------------------------------------------------------------


class CatalogueError(MediganIsoError):
    """Raised when the model catalogue cannot be loaded, validated or queried."""


class CatalogueSourceError(CatalogueError):
    """Raised when a catalogue source (file, directory, URL) cannot be read or parsed as JSON."""

    def __init__(self, source: str, reason: str, *, remedy: str | None = None) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"catalogue source {source}: {reason}", remedy=remedy)


class CatalogueValidationError(CatalogueError):
    """Raised when catalogue entries break the schema; ``violations`` lists (model_id, json_path, message)."""

    def __init__(
        self,
        source: str,
        violations: Sequence[tuple[str, str, str]],
        *,
        strict: bool = False,
    ) -> None:
        self.source = source
        self.violations = list(violations)
        self.strict = strict
        self.model_ids = sorted({model_id for model_id, _, _ in self.violations})
        lines = [
            neutralise(f"{model_id}: {path}: {msg}", max_chars=REMOTE_MESSAGE_MAX_CHARS)
            for model_id, path, msg in self.violations
        ]
        mode = "strict" if strict else "lenient"
        ids = neutralise(", ".join(self.model_ids), max_chars=REMOTE_MESSAGE_MAX_CHARS)
        super().__init__(
            f"{source}: {len(lines)} schema violation(s) ({mode} mode) in {ids}:\n    "
            + "\n    ".join(lines),
            remedy="fix the entries listed above; `medigan-iso validate PATH` re-checks a file",
        )


class UnknownModelError(CatalogueError, LookupError):
    """Raised when a model id matches no catalogue entry."""

    def __init__(self, model_id: object, close_matches: Sequence[str] = ()) -> None:
        self.model_id = model_id
        self.close_matches = list(close_matches)
        hint = (
            f"did you mean {', '.join(self.close_matches)}?"
            if self.close_matches
            else "`medigan-iso list` shows every known model id"
        )
        super().__init__(f"no model with id {model_id!r} in the catalogue", remedy=hint)


class ConfigKeyError(CatalogueError, KeyError):
    """Raised when a dotted config key (``"execution.generate_method.name"``) is not in a model's entry."""

    def __init__(self, model_id: str, config_key: str, available: Sequence[str] = ()) -> None:
        self.model_id = model_id
        self.config_key = config_key
        self.available = list(available)
        hint = (
            f"keys available there: {', '.join(self.available)}"
            if self.available
            else "`medigan-iso info MODEL --json` shows the whole entry"
        )
        super().__init__(f"model {model_id} has no config key {config_key!r}", remedy=hint)

    def __str__(self) -> str:  # KeyError would show the repr of the message
        return Exception.__str__(self)


# --- packages --------------------------------------------------------------------------------------


class PackageError(MediganIsoError):
    """Raised when a model package cannot be fetched, verified, extracted or loaded."""


class PackageDownloadError(PackageError):
    """Raised when a package download fails; ``status`` is the HTTP status when there was one."""

    def __init__(
        self, url: str, reason: str, *, status: int | None = None, remedy: str | None = None
    ) -> None:
        self.url = url
        self.reason = reason
        self.status = status
        super().__init__(f"cannot download {url}: {reason}", remedy=remedy)


class PackageIntegrityError(PackageError):
    """Raised when a package's digest differs from the pinned one; the file has been deleted."""

    def __init__(self, source: str, *, algorithm: str, expected: str, actual: str) -> None:
        self.source = source
        self.algorithm = algorithm
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"{source}: {algorithm} mismatch: expected {expected}, got {actual} (the file was deleted)",
            remedy="the download was corrupted or the package changed upstream; retry, and if it "
            "persists ask the catalogue maintainer to confirm the hash",
        )


class UnsafeArchiveError(PackageError):
    """Raised when safe_extract refuses an archive; nothing from it was written."""

    def __init__(self, archive: str, reason: str, *, member: str | None = None) -> None:
        self.archive = archive
        self.reason = reason
        self.member = member
        where = f" (entry {member!r})" if member is not None else ""
        super().__init__(
            f"refusing to extract {archive}{where}: {reason}; nothing was written",
            remedy="the package is malformed or hostile; do not run it",
        )


class PackageLayoutError(PackageError):
    """Raised when an extracted package does not have the layout its catalogue entry describes."""

    def __init__(self, model_id: str, reason: str, *, path: Path | None = None) -> None:
        self.model_id = model_id
        self.reason = reason
        self.path = path
        super().__init__(f"model {model_id}: {reason}" + (f" ({path})" if path else ""))


class UnpinnedPackageError(PackageError):
    """Raised when a package has no usable pinned sha256 and the policy (require_hashes) needs one."""

    def __init__(self, model_id: str, source: str, reason: str, *, remedy: str | None = None) -> None:
        self.model_id = model_id
        self.source = source
        self.reason = reason
        super().__init__(
            f"model {model_id} ({source}): {reason}",
            remedy=remedy
            or "pin it: `medigan-iso hash FILE_OR_DIR` prints the line to add to the entry's execution",
        )


# --- environments ----------------------------------------------------------------------------------


class EnvError(MediganIsoError):
    """Raised when a model environment cannot be resolved, built or found."""


class ResolutionError(EnvError):
    """Raised when the resolver finds no set of versions; ``explanation`` is the resolver's own text."""

    def __init__(
        self,
        model_id: str | None,
        requirements: Sequence[str],
        explanation: str,
        *,
        offline_may_help: bool | None = None,
        remedy: str | None = None,
    ) -> None:
        self.model_id = model_id
        self.requirements = list(requirements)
        self.explanation = explanation
        self.offline_may_help = offline_may_help
        who = f"model {model_id}" if model_id else "requirements"
        super().__init__(f"cannot resolve {who}: {explanation.strip()}", remedy=remedy)


class DirectReferenceError(ResolutionError):
    """A catalogue entry's dependency is a direct reference (``name @ url``) that is not allowed."""

    def __init__(self, model_id: str | None, dependency: str, why: str, *, remedy: str) -> None:
        self.dependency = dependency
        super().__init__(
            model_id,
            [dependency],
            f"dependency {dependency!r} is a direct reference and {why}; installing it could run or copy "
            "any file the URL names",
            remedy=remedy,
        )


class InterpreterNotFoundError(EnvError):
    """Raised when no interpreter satisfies an entry's ``python_requires``."""

    def __init__(self, model_id: str | None, python_requires: str, *, detail: str = "") -> None:
        self.model_id = model_id
        self.python_requires = python_requires
        who = f"model {model_id}" if model_id else "this env"
        super().__init__(
            f"{who} needs Python {python_requires}, and none was found" + (f": {detail}" if detail else ""),
            remedy=f"install one with `uv python install '{python_requires}'`",
        )


class EnvBuildError(EnvError):
    """Raised when installing an env fails; ``log_path`` holds the full build log."""

    def __init__(
        self,
        model_id: str | None,
        reason: str,
        *,
        returncode: int | None = None,
        log_path: Path | None = None,
        log_tail: str = "",
        remedy: str | None = None,
    ) -> None:
        self.model_id = model_id
        self.reason = reason
        self.returncode = returncode
        self.log_path = log_path
        self.log_tail = log_tail
        who = f"model {model_id}" if model_id else "env"
        msg = f"building the env for {who} failed: {reason}"
        if returncode is not None:
            msg += f" (exit code {returncode})"
        if log_tail:
            msg += "\n" + log_tail.rstrip()
        if log_path is not None:
            msg += f"\n  full log: {log_path}"
        super().__init__(msg, remedy=remedy)


class EnvNotBuiltError(EnvError):
    """Raised when a model has no env yet and the caller did not allow building one."""

    def __init__(self, model_id: str, *, reason: str = "install_dependencies=False") -> None:
        self.model_id = model_id
        self.command = f"medigan-iso env build {model_id}"
        self.reason = reason
        super().__init__(
            f"model {model_id} has no environment yet and building at run time is off ({reason})",
            remedy=f"run `{self.command}` where building is allowed, or allow building here "
            "(unset MEDIGAN_ISO_BUILD=never / pass install_dependencies=True to Session)",
        )


# --- runner ----------------------------------------------------------------------------------------


class RunnerError(MediganIsoError):
    """Raised when the runner subprocess misbehaves or the model inside it fails."""


class ProtocolError(RunnerError):
    """Raised when a frame from the runner is malformed, oversized or out of order."""


class RunnerStartError(RunnerError):
    """Raised when the runner cannot be spawned or its handshake is wrong."""


class RunnerTimeoutError(RunnerError):
    """Raised when a runner clock runs out; ``phase`` is "ready", "inactivity" or "shutdown"."""

    def __init__(self, phase: str, timeout_s: float, *, stderr_tail: str = "") -> None:
        self.phase = phase
        self.timeout_s = timeout_s
        self.stderr_tail = stderr_tail
        msg = f"runner timed out waiting for {phase} after {timeout_s:g} s"
        if stderr_tail:
            msg += "\n  runner stderr (tail):\n  | " + _tail(stderr_tail)
        super().__init__(msg, remedy="raise the timeout if the model is just slow")


class RunnerCrashedError(RunnerError):
    """Raised when the runner process dies; carries exit code or signal name and the stderr tail."""

    def __init__(
        self,
        *,
        returncode: int | None,
        signal_name: str | None = None,
        stderr_tail: str = "",
        log_path: Path | None = None,
        model_id: str | None = None,
    ) -> None:
        self.returncode = returncode
        self.signal_name = signal_name
        self.stderr_tail = stderr_tail
        self.log_path = log_path
        self.model_id = model_id
        how = f"killed by {signal_name}" if signal_name else f"exited with code {returncode}"
        who = f" for model {model_id}" if model_id else ""
        msg = f"runner{who} {how}"
        if stderr_tail:
            msg += "\n  runner stderr (tail):\n  | " + _tail(stderr_tail)
        if log_path is not None:
            msg += f"\n  full log: {log_path}"
        super().__init__(msg)


class ModelError(RunnerError):
    """Raised when the model's own code raised inside the runner."""

    def __init__(
        self, remote_type: str, remote_message: str, traceback_text: str, *, model_id: str | None = None
    ) -> None:
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.traceback_text = traceback_text
        self.model_id = model_id
        who = f"model {neutralise(model_id)}" if model_id else "model"
        kind = neutralise(remote_type, max_chars=TYPE_NAME_MAX_CHARS)
        text = neutralise(remote_message, max_chars=REMOTE_MESSAGE_MAX_CHARS, multiline=True)
        trace = neutralise(traceback_text.rstrip(), max_chars=TRACEBACK_MAX_CHARS, multiline=True)
        super().__init__(f"{who} raised {kind}: {text}\n  --- remote traceback ---\n  | {trace}")


def _tail(stderr_tail: str) -> str:
    """A stderr tail fit for a message: neutralised, capped from the front (the end is what matters)."""
    text = stderr_tail.rstrip()
    if len(text) > STDERR_TAIL_MAX_CHARS:
        text = text[-STDERR_TAIL_MAX_CHARS:]
    return neutralise(text, max_chars=STDERR_TAIL_MAX_CHARS * 2, multiline=True)


class ResourceLimitError(RunnerError):
    """Raised when a runner is stopped by a limit; ``limit`` names it ("memory", "processes", "output")."""

    def __init__(
        self, limit: str, detail: str, *, model_id: str | None = None, remedy: str | None = None
    ) -> None:
        self.limit = limit
        self.detail = detail
        self.model_id = model_id
        who = f"model {neutralise(model_id)}" if model_id else "the model"
        super().__init__(
            f"{who} was stopped by its {limit} limit: {detail}",
            remedy=remedy
            or "raise the limit for this model (catalogue execution.resources) if the model needs it",
        )


# --- output ----------------------------------------------------------------------------------------


class OutputExistsError(MediganIsoError, FileExistsError):
    """Raised when a sample file to be written already exists; nothing of it was overwritten."""

    def __init__(self, path: Path, *, directory: Path | None = None) -> None:
        self.path = path
        self.directory = directory if directory is not None else path.parent
        MediganIsoError.__init__(
            self,
            f"{path} already exists; refusing to overwrite a sample",
            remedy=f"write into an empty or new folder, or remove the sample files in {self.directory}",
        )


# --- sandbox ---------------------------------------------------------------------------------------


class SandboxError(MediganIsoError):
    """Raised when the sandbox policy requires a confinement layer this machine cannot provide."""

    def __init__(self, layer: str, reason: str, *, remedy: str | None = None) -> None:
        self.layer = layer
        self.reason = reason
        super().__init__(f"sandbox layer {layer!r} unavailable: {reason}", remedy=remedy)


class SandboxPolicyError(SandboxError, ValueError):
    """Raised when a sandbox policy (argument, ``$MEDIGAN_ISO_SANDBOX`` or catalogue entry) is unknown."""

    def __init__(self, source: str, value: object, policies: Sequence[str]) -> None:
        self.source = source
        self.value = value
        self.policies = tuple(policies)
        MediganIsoError.__init__(
            self,
            f"{source} must be one of {', '.join(self.policies)}, got {value!r}",
            remedy=f"set it to one of {', '.join(self.policies)} (auto uses what this machine supports)",
        )
        self.layer = "policy"
        self.reason = f"unknown policy {value!r}"


# --- contributions ---------------------------------------------------------------------------------


class ContributionError(MediganIsoError):
    """Raised when a model contribution cannot go ahead: its entry, its folder, a refused confirmation,
    a token that is missing; ``model_id`` names the contribution. Nothing was published."""

    def __init__(self, model_id: str, reason: str, *, remedy: str | None = None) -> None:
        self.model_id = model_id
        self.reason = reason
        super().__init__(f"contribution of {model_id}: {reason}", remedy=remedy)


class ModelTestError(ContributionError):
    """Raised when a contributed package fails its test in a fresh env of its own; nothing was uploaded."""

    def __init__(self, model_id: str, reason: str, *, remedy: str | None = None) -> None:
        super().__init__(
            model_id,
            f"the package failed its test: {reason}; nothing was uploaded",
            remedy=remedy or "fix the package and run the contribution again",
        )
        self.reason = reason


class RemoteServiceError(ContributionError):
    """Raised when Zenodo or GitHub answers with an error (``status``, the ``body`` it sent, token-free)
    or cannot be reached (``status`` None); ``step`` names what was being done."""

    def __init__(
        self,
        model_id: str,
        *,
        service: str,
        step: str,
        status: int | None,
        body: str,
        remedy: str | None = None,
    ) -> None:
        self.service = service
        self.step = step
        self.status = status
        self.body = body
        what = f"HTTP {status}" if status is not None else "no answer"
        super().__init__(model_id, f"{service}: {step} failed ({what}): {body}", remedy=remedy)


# --- explorer --------------------------------------------------------------------------------------


class ExploreError(MediganIsoError):
    """Raised when the web explorer cannot start (address, flags) or refuses a request."""


class ExploreRequestError(ExploreError, ValueError):
    """Raised when an explorer request names a bad parameter; ``parameter`` is its name."""

    def __init__(self, parameter: str, problem: str, *, remedy: str) -> None:
        self.parameter = parameter
        self.problem = problem
        super().__init__(f"{parameter}: {problem}", remedy=remedy)


class ModelBusyError(ExploreError):
    """Raised when a model already has ``limit`` requests waiting for its runner."""

    def __init__(self, model_id: str, limit: int) -> None:
        self.model_id = model_id
        self.limit = limit
        super().__init__(
            f"model {model_id} already has {limit} requests waiting for its runner",
            remedy="wait for them to finish, then retry",
        )


# --- provenance ------------------------------------------------------------------------------------


class ProvenanceError(MediganIsoError):
    """Raised when a folder cannot be verified: no manifest.jsonl, or it or run.json is unreadable."""

    def __init__(self, directory: Path, problem: str, *, remedy: str) -> None:
        self.directory = directory
        self.problem = problem
        super().__init__(f"{directory}: {problem}", remedy=remedy)


# --- bundles ---------------------------------------------------------------------------------------


class BundleError(MediganIsoError):
    """Raised when an air-gap bundle cannot be made, verified or installed; ``problems`` names each file."""

    def __init__(
        self, bundle: str, reason: str, *, problems: Sequence[str] = (), remedy: str | None = None
    ) -> None:
        self.bundle = bundle
        self.reason = reason
        self.problems = tuple(problems)
        listed = "".join(f"\n  {p}" for p in self.problems[:50])
        more = f"\n  ... and {len(self.problems) - 50} more" if len(self.problems) > 50 else ""
        super().__init__(f"bundle {bundle}: {reason}{listed}{more}", remedy=remedy)
