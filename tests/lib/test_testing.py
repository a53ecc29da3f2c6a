"""aelab.testing: references that patches cannot reach, forbidden calls, and failure messages."""

from __future__ import annotations

import sys

import pytest
import torch

import aelab
import aelab.functional.distributions as distributions
import aelab.vae.vae as vae_module
from aelab.testing import check_close, forbid_reference, reference, substitute

KL = "aelab.functional.distributions.kl_normal"


def wrong_kl(mu, logvar):
    return torch.full((mu.shape[0],), -1.0)


@pytest.fixture
def patched_kl(monkeypatch):
    """aelab's KL replaced everywhere a student could reach it by attribute assignment."""
    monkeypatch.setattr(aelab.functional, "kl_normal", wrong_kl)
    monkeypatch.setattr(distributions, "kl_normal", wrong_kl)
    monkeypatch.setattr(vae_module, "kl_normal", wrong_kl)


def test_reference_is_a_fresh_copy_outside_sys_modules():
    kl = reference(KL)
    assert kl is not distributions.kl_normal
    assert kl.__globals__ is not vars(distributions)
    assert all(m.__dict__ is not kl.__globals__ for m in list(sys.modules.values()) if hasattr(m, "__dict__"))
    assert reference(KL) is not kl  # every call loads afresh
    assert torch.allclose(kl(torch.ones(2, 4), torch.zeros(2, 4)), torch.full((2,), 2.0))


def test_patching_aelab_does_not_reach_the_reference(patched_kl):
    assert aelab.functional.kl_normal is wrong_kl
    for name in (KL, "aelab.functional.kl_normal"):
        assert torch.allclose(reference(name)(torch.ones(1, 4), torch.zeros(1, 4)), torch.tensor([2.0]))
    # A module that imports the patched function gets a fresh one too: its loss uses the true KL.
    VAE = reference("aelab.vae.vae.VAE")
    model = VAE(VAE.Config(latent_dim=2, hidden=(8,)))
    x = torch.rand(3, 1, 28, 28)
    loss = model.loss(x, model(x))
    assert loss.terms["kl"].item() > 0


def test_reference_resolves_attribute_paths_and_reports_unknown_names():
    assert reference("aelab.vae.vae.VAE.loss").__qualname__ == "VAE.loss"
    with pytest.raises(AttributeError, match="no_such_function"):
        reference("aelab.functional.distributions.no_such_function")
    with pytest.raises(ValueError):
        reference("torch.exp")


def test_forbid_reference_makes_calls_fail_and_restores():
    original = distributions.kl_normal

    def lazy_student(mu, logvar):
        return aelab.functional.kl_normal(mu, logvar)

    with forbid_reference(KL):
        for call in (lazy_student, distributions.kl_normal, vae_module.kl_normal):
            with pytest.raises(AssertionError, match="implement it yourself"):
                call(torch.zeros(1, 2), torch.zeros(1, 2))
        assert reference(KL)(torch.zeros(1, 2), torch.zeros(1, 2)).item() == 0.0  # fresh copies still work
    assert distributions.kl_normal is original
    assert aelab.functional.kl_normal is original
    assert vae_module.kl_normal is original


def test_forbid_reference_catches_aliases_in_the_notebook_namespace(monkeypatch):
    main = sys.modules["__main__"]
    monkeypatch.setattr(main, "my_kl", distributions.kl_normal, raising=False)
    with forbid_reference(KL):
        with pytest.raises(AssertionError):
            main.my_kl(torch.zeros(1, 2), torch.zeros(1, 2))
    assert main.my_kl is distributions.kl_normal


def test_forbid_reference_leaves_the_students_own_function_alone(patched_kl):
    with forbid_reference(KL):
        assert wrong_kl(torch.zeros(2, 3), torch.zeros(2, 3)).tolist() == [-1.0, -1.0]
        with pytest.raises(AssertionError):
            aelab.functional.kl_normal(torch.zeros(1, 2), torch.zeros(1, 2))
    assert aelab.functional.kl_normal is wrong_kl


def test_substitute_binds_and_restores():
    namespace = {"a": 1}
    with substitute(namespace, a=2, b=3):
        assert namespace == {"a": 2, "b": 3}
    assert namespace == {"a": 1}


@pytest.mark.parametrize(
    ("student", "expected", "message"),
    [
        ([1.0, 2.0], torch.tensor([1.0, 2.0]), "returned list"),
        (torch.ones(2, 3), torch.ones(2), "sum over every dimension except the batch"),
        (torch.tensor(1.0), torch.ones(2), "one number for the whole batch"),
        (torch.ones(2, dtype=torch.float64), torch.ones(2), "dtype"),
        (torch.tensor([1.0, float("nan")]), torch.ones(2), "non-finite"),
        (torch.tensor([1.0, 3.0]), torch.ones(2), "max abs error 2"),
    ],
)
def test_check_close_names_the_problem(student, expected, message):
    with pytest.raises(AssertionError, match=message):
        check_close(student, expected, "f", "a hint")


def test_check_close_recognises_a_known_mistake():
    with pytest.raises(AssertionError, match="the sign is flipped"):
        check_close(torch.tensor([-2.0]), torch.tensor([2.0]), "kl", "hint", mistakes={"the sign is flipped": torch.tensor([-2.0])})
    with pytest.raises(AssertionError, match="Hint: hint"):
        check_close(torch.tensor([5.0]), torch.tensor([2.0]), "kl", "hint", mistakes={"the sign is flipped": torch.tensor([-2.0])})
    check_close(torch.tensor([2.0 + 1e-7]), torch.tensor([2.0]), "kl")


def test_reference_to_a_function_of_a_submodule_its_package_imports():
    # aelab.data's __init__ imports aelab.data.lm (which registers a preparer): asking for a function
    # of it must load the module once, not a second time after its parent.
    fresh = reference("aelab.data.lm.activations")
    assert callable(fresh) and fresh is not aelab.data.lm.activations
