import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

OPS = ["power", "log", "tanh"]
# Strengths inside each op's range that are far from the identity (and not 0.5, the default).
STRENGTHS = {"power": [0.3, 0.7], "log": [0.4, 2.0], "tanh": [0.3, 1.5]}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
