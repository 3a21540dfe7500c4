import pytest

from pbpk_models.library import build_spec


@pytest.fixture(scope="session")
def psma_published():
    return build_spec("psma-pbrpk", "published")


@pytest.fixture(scope="session")
def psma_corrected():
    return build_spec("psma-pbrpk", "corrected")


@pytest.fixture(scope="session")
def sstr():
    return build_spec("sstr")
