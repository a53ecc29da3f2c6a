"""The round trip of a01_vae: a KL with the wrong sign, the same mistake hidden by patching aelab, and a
submission with a cell that never finishes and two functions that only hand over to aelab's."""

from harness import AssignmentSpec, Expect, Feedback, Submission

KL = frozenset({"test_kl_normal", "test_kl_normal_hidden"})
BERNOULLI = frozenset({"test_bernoulli_log_likelihood", "test_bernoulli_log_likelihood_hidden"})
GAUSSIAN = frozenset({"test_gaussian_log_likelihood", "test_gaussian_log_likelihood_hidden"})
ELBO = frozenset({"test_elbo", "test_elbo_hidden"})

WRONG_SIGN_KL = '''
def kl_normal(mu, logvar):
    """KL(N(mu, diag exp(logvar)) || N(0, I)) per example, with the sign flipped by mistake."""
    kl = 0.5 * (mu**2 + torch.exp(logvar) - 1.0 - logvar)
    return -kl.flatten(1).sum(dim=1)
'''

TAMPERING_KL = '''
def my_wrong_kl(mu, logvar):
    """A wrong KL (the sign is flipped) that also replaces aelab's, hoping the tests compare against it."""
    return -0.5 * (torch.exp(logvar) + mu**2 - 1.0 - logvar).flatten(1).sum(dim=1)


kl_normal = my_wrong_kl
aelab.functional.kl_normal = my_wrong_kl
aelab.functional.distributions.kl_normal = my_wrong_kl
'''

HANG = "while True:\n    pass\n\n"

LAZY_BERNOULLI = "bernoulli_log_likelihood = aelab.functional.bernoulli_log_likelihood"

LAZY_ELBO = '''
def elbo(log_likelihood, kl, beta=1.0):
    """The ELBO, by calling aelab's."""
    return aelab.functional.elbo(log_likelihood, kl, beta)
'''

SIGN = Expect("AssertionError", "sign is flipped")
LAZY = Expect("AssertionError", "implement it yourself")

SPEC = AssignmentSpec(
    name="a01_vae",
    points={
        "test_reparameterize": 1,
        "test_reparameterize_hidden": 1,
        "test_kl_normal": 1,
        "test_kl_normal_hidden": 2,
        "test_bernoulli_log_likelihood": 1,
        "test_bernoulli_log_likelihood_hidden": 2,
        "test_gaussian_log_likelihood": 1,
        "test_gaussian_log_likelihood_hidden": 2,
        "test_elbo": 1,
        "test_elbo_hidden": 1,
        "test_my_vae": 1,
        "test_my_vae_hidden": 2,
        "test_training": 2,
    },
    submissions={
        # The KL cells fail, and training with a negated KL diverges, so the trained-model cell fails
        # too; MyVAE.loss is graded with aelab's parts substituted for the student's, so it keeps its points.
        "wrong_kl": Submission({"kl_normal": WRONG_SIGN_KL}, KL | {"test_training"}, {"test_kl_normal": SIGN}),
        "tampering": Submission({"kl_normal": TAMPERING_KL}, KL | {"test_training"}, {"test_kl_normal": SIGN}),
        # The Gaussian cell is interrupted at the timeout before it defines gaussian_log_likelihood;
        # MyVAE (Bernoulli) and training do not need it. The Bernoulli likelihood (an alias) and the
        # ELBO (a wrapper) only call aelab's: their tests fail, training with them works.
        "hanging_lazy": Submission(
            {"gaussian_log_likelihood": lambda solution: HANG + solution, "bernoulli_log_likelihood": LAZY_BERNOULLI, "elbo": LAZY_ELBO},
            GAUSSIAN | BERNOULLI | ELBO,
            {
                "gaussian_log_likelihood": Expect("CellTimeoutError"),
                "test_gaussian_log_likelihood": Expect("NameError"),  # the definition after the loop never ran
                "test_bernoulli_log_likelihood": LAZY,
                "test_elbo": LAZY,
                "test_training": Expect(None, "negative ELBO"),
            },
        ),
    },
    tampering="tampering",
    totals={"solution": 18, "blank": 0, "wrong_kl": 13, "tampering": 13, "hanging_lazy": 10},
    not_in_release=("BEGIN SOLUTION", "BEGIN HIDDEN TESTS", "x * logits - F.softplus(logits)", "check_close(mu.grad"),
    feedback=Feedback("wrong_kl", "test_kl_normal_hidden", ("sign", "Hidden tests of kl_normal")),
    # The longest a01 cell in fast mode (training, with the one-time imports torch's optimizer
    # triggers) takes 5-10 s on an idle 2-core machine and about 20 s on a busy one.
    timeout=45,
)
