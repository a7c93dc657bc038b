#!/usr/bin/env python
"""Check that this machine can train Sustain (SPEC §9); the same checks as `sustain doctor`.

    python training_diagnostics.py [--config FILE] [--json]

Each check prints PASS, WARN or FAIL with a hint, then a DIAGNOSTIC SUMMARY.
Exit code 0 when nothing FAILs, 1 otherwise, 2 for a bad config or argument.
Without --config the checks use configs/demo.yaml and skip the data check.
--json prints a machine-readable report on stdout (the human lines go to stderr).
The checks themselves live in sustain/diagnostics/.
"""

import sys

from sustain.cli import main

if __name__ == "__main__":
    sys.exit(main(["doctor", *sys.argv[1:]]))
