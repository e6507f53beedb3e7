"""The example's own settings, read from the environment when the app is made (the stack's
settings are deploy/settings.py's; these belong to this service only)."""

import math
import os
from collections.abc import Mapping

MAX_JOB_MAX_SECONDS = 86_400


def job_max_seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = math.nan  # refused below, as are inf and out-of-range values
    if 0 < value <= MAX_JOB_MAX_SECONDS:
        return value
    raise ValueError(f"JOB_MAX_SECONDS={raw!r} is not valid: expected a number greater than 0 "
                     f"and at most {MAX_JOB_MAX_SECONDS}")


def from_env(environ: Mapping[str, str] = os.environ) -> dict:
    return {
        # The largest `seconds` /job1, /job2, /job and the jobs accept.
        "JOB_MAX_SECONDS": job_max_seconds(environ.get("JOB_MAX_SECONDS") or "60"),
        # From SECRET_KEY or SECRET_KEY_FILE (the stack reads the file). No default: an app
        # that signs sessions must be given one, never run with a guessable key.
        "SECRET_KEY": environ.get("SECRET_KEY") or None,
        # Shown by GET /: which build answers (a rolling update shows both for a while).
        "APP_VERSION": environ.get("APP_VERSION") or "dev",
    }
