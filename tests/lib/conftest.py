"""Fixtures shared by the package tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def float64():
    """Closed-form comparisons in double precision with a fixed seed; the default dtype is restored."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(old)
