"""The S3 API server (moto's, its own process) shared by the store tests of one session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.services import s3_server


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    with s3_server() as endpoint:
        yield endpoint
