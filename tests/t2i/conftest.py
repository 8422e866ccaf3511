import pytest


@pytest.fixture(scope="session")
def text_encoder():
    """The default (offline, bundled) MiniLM encoder, loaded once for the whole session."""
    from t2i.text import TextEncoder

    return TextEncoder(max_length=32)
