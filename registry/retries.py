"""Retries for the registry's I/O (MLflow, S3): the one layer that retries (tasks/requests.py).

Only transient failures are tried again — network trouble, server-side (5xx) and throttling answers —
with exponential backoff and jitter; a refusal (4xx, a missing resource) is raised at once.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from mlflow.exceptions import MlflowException, RestException

log = logging.getLogger(__name__)
T = TypeVar("T")


def _transient(error: Exception) -> bool:
    """Errors worth another try: network trouble and server-side (5xx / throttling) answers."""
    text = f"{type(error).__name__} {error}"
    if isinstance(error, RestException):
        return error.get_http_status_code() >= 500 or error.get_http_status_code() == 429
    if isinstance(error, MlflowException):
        return any(s in text for s in ("Connection", "timed out", "Max retries", "503", "502", "500", "SlowDown"))
    try:
        import botocore.exceptions as bx

        if isinstance(error, (bx.EndpointConnectionError, bx.ConnectionClosedError, bx.ReadTimeoutError)):
            return True
        if isinstance(error, bx.ClientError):
            code = error.response.get("Error", {}).get("Code", "")
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            return status >= 500 or code in ("SlowDown", "Throttling", "RequestTimeout")
    except ImportError:  # pragma: no cover - boto3 is a dependency
        pass
    return isinstance(error, (ConnectionError, TimeoutError))


def with_retries(action: Callable[[], T], *, what: str, attempts: int = 5, base_delay: float = 0.5) -> T:
    """Run `action`, retrying transient failures with exponential backoff and jitter."""
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as error:  # noqa: BLE001 - classified below
            if attempt == attempts or not _transient(error):
                raise
            delay = base_delay * 2 ** (attempt - 1) * (1 + random.random() / 2)
            log.warning("%s failed (%s); retry %d/%d in %.1fs", what, error, attempt, attempts - 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")
