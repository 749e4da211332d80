"""Settings for the family parity tests."""

import pytest
import torch


@pytest.fixture(scope="package", autouse=True)
def one_thread():
    """The models are tiny: with several threads per matmul on a small, busy machine the
    parity tests spend their time in thread contention (x30 slower), not in arithmetic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
