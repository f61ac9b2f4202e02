"""Domain errors. Each maps to one gRPC status code (vmmd/api/errors.py) and its message says
what the caller should change."""
from __future__ import annotations


class VmmdError(Exception):
    code = "INTERNAL"


class InvalidArgument(VmmdError):
    code = "INVALID_ARGUMENT"       # a bad request, or over a per-VM limit


class NotFound(VmmdError):
    code = "NOT_FOUND"


class FailedPrecondition(VmmdError):
    code = "FAILED_PRECONDITION"    # wrong state for this call


class ResourceExhausted(VmmdError):
    code = "RESOURCE_EXHAUSTED"     # the host is full


class Aborted(VmmdError):
    code = "ABORTED"                # lost a race with another call; retry


class Unavailable(VmmdError):
    code = "UNAVAILABLE"            # the daemon is draining


class Internal(VmmdError):
    code = "INTERNAL"


class Unimplemented(VmmdError):
    code = "UNIMPLEMENTED"
