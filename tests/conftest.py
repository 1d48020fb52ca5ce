import pytest


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    # anyio's own fixture runs every test once per installed backend; this service is asyncio-only.
    return "asyncio"
