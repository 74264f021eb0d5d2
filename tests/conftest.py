"""Shared test settings. Tests run offline on the CPU."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The tensors in the tests are small: one intra-op thread is faster than two, and much faster
    on a busy 2-core machine (a learning test took 120 s with 2 threads against 14 s with one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
