import pytest
import torch


@pytest.fixture(scope="module")
def torch_one_thread():
    """Run a module's small LM trainings on one thread: faster than two contended ones, and
    deterministic."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
