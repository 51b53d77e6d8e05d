"""Process exit codes shared by the CLI and the Kubernetes podFailurePolicy.

A Job must retry a pod that died of infrastructure trouble and fail fast on a configuration error
(retrying a bad experiment file only burns GPU hours), so the two get distinct codes.
"""

OK = 0
FAILURE = 1             # a bug or an unexpected error: retried a bounded number of times
USAGE = 2               # click's own code for a bad command line
CONFIG_ERROR = 78       # EX_CONFIG: bad experiment file or bad input data; never retried
TEMPORARY = 75          # EX_TEMPFAIL: judge server or storage unreachable past its budget; retried
LOCKED = 73             # another run of the same experiment holds the lease
