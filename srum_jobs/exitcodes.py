"""Process exit codes shared by every command and the Kubernetes podFailurePolicy.

A Job must retry a pod that died of infrastructure trouble and fail fast on a permanent error (retrying
a bad experiment file only burns GPU hours), so the two get distinct codes. Which error gets which code
is decided in one place: `entry.classify`.
"""

OK = 0
FAILURE = 1             # a bug or an unexpected error: retried a bounded number of times
USAGE = 2               # click's own code for a bad command line
LOCKED = 73             # another run of the same experiment holds the lease (or took it over from this one)
NO_SPACE = 74           # EX_IOERR: disk or quota full; free space and rerun (it resumes); retried a bounded number of times
TEMPORARY = 75          # EX_TEMPFAIL: judge server or storage unreachable past its budget; retried
CONFIG_ERROR = 78       # EX_CONFIG: bad experiment file, bad input data, unusable storage root or credentials,
                        # hostile ids, damage that cannot be repaired; never retried
INTERRUPTED = 130       # stopped by SIGINT (Ctrl-C); a stop by another signal exits 128 + its number (SIGTERM: 143)

# Codes a Job must not retry (its podFailurePolicy fails the Job on them at once).
PERMANENT = (USAGE, CONFIG_ERROR)

MEANING = {
    OK: "done",
    FAILURE: "unexpected error",
    USAGE: "bad command line",
    LOCKED: "experiment locked by another run",
    NO_SPACE: "disk full",
    TEMPORARY: "temporary failure, retry",
    CONFIG_ERROR: "configuration or input error, not retried",
    INTERRUPTED: "interrupted",
}


def meaning(code: int) -> str:
    if code in MEANING:
        return MEANING[code]
    if code > 128:
        import signal

        try:
            return f"stopped by {signal.Signals(code - 128).name}"
        except ValueError:
            pass
    if code < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            pass
    return "failed"
