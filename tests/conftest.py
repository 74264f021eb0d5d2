"""Shared test settings and fixtures. Tests run offline on the CPU."""
import pytest
import torch

from mdlm_course.data import DEFAULT_CORPUS, TokenData
from mdlm_course.tokenizer import BPETokenizer


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The tensors in the tests are small: one intra-op thread is faster than two, and much faster
    on a busy 2-core machine (a learning test took 120 s with 2 threads against 14 s with one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def byte_tok():
    """A byte-level tokenizer: id = byte value, mask_id = 256."""
    return BPETokenizer([])


@pytest.fixture(scope="session")
def data(byte_tok):
    """The first 40,000 characters of the corpus as bytes: train = the first 95%, val = the rest."""
    return TokenData.from_text(DEFAULT_CORPUS.read_text(encoding="utf-8")[:40_000], byte_tok, cache_dir=None)
