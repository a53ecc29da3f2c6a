"""The round trip of a02_disentangling: MWS weights without the 1/N, rows permuted together (plus a
log-density that only calls aelab's), the discriminator's labels swapped, and a capacity that keeps
rising hidden by patching aelab."""

from harness import AssignmentSpec, Expect, Feedback, Submission

DENSITY = frozenset({"test_log_density_gaussian", "test_log_density_gaussian_hidden"})
KL = frozenset({"test_kl_decomposition", "test_kl_decomposition_hidden"})
PERMUTE = frozenset({"test_permute_dims", "test_permute_dims_hidden"})
DISCRIMINATOR = frozenset({"test_discriminator_loss", "test_discriminator_loss_hidden"})
CAPACITY = frozenset({"test_capacity", "test_capacity_hidden"})

FORGOT_N = '''
def kl_decomposition_mws(z, mu, logvar, dataset_size):
    """The decomposition with every posterior of the batch weighted by 1/M: the 1/N is forgotten."""
    pairs = log_density_gaussian(z, mu, logvar)
    log_m = math.log(z.shape[0])
    log_qz = torch.logsumexp(pairs.sum(-1), dim=1) - log_m
    log_prod = (torch.logsumexp(pairs, dim=1) - log_m).sum(-1)
    log_qz_x = torch.diagonal(pairs.sum(-1))
    log_pz = (-0.5 * (math.log(2 * math.pi) + z.pow(2))).sum(-1)
    return KLDecomposition(mi=log_qz_x - log_qz, tc=log_qz - log_prod, dim_kl=log_prod - log_pz)
'''

ROWS_TOGETHER = '''
def permute_dims(z, generator=None):
    """One permutation of the rows for every dimension at once (the dependence between dimensions stays)."""
    return z[torch.randperm(z.shape[0], generator=generator)]
'''

LAZY_DENSITY = "log_density_gaussian = aelab.functional.log_density_gaussian"

SWAPPED_LABELS = '''
def discriminator_loss(discriminator, z, z_other, generator=None):
    """The discriminator's cross-entropy with the real codes labelled 1 and the permuted ones 0."""
    fake = permute_dims(z_other, generator=generator)
    logits = discriminator(torch.cat([z, fake]))
    target = torch.cat([torch.ones(z.shape[0]), torch.zeros(fake.shape[0])]).long()
    loss = F.cross_entropy(logits, target)
    return loss, (logits.argmax(1) == target).float().mean()
'''

TAMPERING_CAPACITY = '''
def capacity(step, capacity_start, capacity_max, capacity_steps):
    """A ramp that never stops at capacity_max, and aelab's replaced by the same, hoping the tests compare against it."""
    return capacity_start + (capacity_max - capacity_start) * step / max(capacity_steps, 1)


def capacity_objective(log_likelihood, kl, capacity, gamma):
    return -log_likelihood.mean() + gamma * (kl.mean() - capacity).abs()


def endless_ramp(steps, start=0.0, end=1.0):
    return lambda step: start + (end - start) * step / max(steps, 1)


aelab.train.schedules.linear_ramp = endless_ramp
aelab.train.linear_ramp = endless_ramp
'''

RISING = Expect("AssertionError", "keeps rising after capacity_steps")

SPEC = AssignmentSpec(
    name="a02_disentangling",
    points={
        "test_log_density_gaussian": 1,
        "test_log_density_gaussian_hidden": 1,
        "test_kl_decomposition": 1,
        "test_kl_decomposition_hidden": 2,
        "test_permute_dims": 1,
        "test_permute_dims_hidden": 2,
        "test_discriminator_loss": 1,
        "test_discriminator_loss_hidden": 2,
        "test_capacity": 1,
        "test_capacity_hidden": 2,
        "test_my_beta_tcvae": 1,
        "test_my_beta_tcvae_hidden": 1,
        "test_training": 2,
    },
    submissions={
        # Without the 1/N every term moves by a constant: the decomposition cells fail, but the
        # gradients, hence the training, are exactly those of the right weights.
        "forgot_n": Submission(
            {"kl_decomposition_mws": FORGOT_N},
            KL,
            {"test_kl_decomposition": Expect("AssertionError", "the 1/N is missing from the weights")},
        ),
        # Rows permuted together keep the dependence between dimensions; the discriminator cells run
        # with aelab's permute_dims and keep their points. The log-density is an alias of aelab's: its
        # tests fail on the check that forbids it, and training (which it serves) still works.
        "rows_lazy": Submission(
            {"permute_dims": ROWS_TOGETHER, "log_density_gaussian": LAZY_DENSITY},
            PERMUTE | DENSITY,
            {
                "test_permute_dims": Expect("AssertionError", "you shuffled whole rows with one permutation"),
                "test_permute_dims_hidden": Expect("AssertionError", "still correlate"),
                "test_log_density_gaussian": Expect("AssertionError", "implement it yourself"),
            },
        ),
        "swapped_labels": Submission(
            {"discriminator_loss": SWAPPED_LABELS},
            DISCRIMINATOR,
            {
                "test_discriminator_loss": Expect("AssertionError", "the labels are swapped"),
                "test_discriminator_loss_hidden": Expect("AssertionError", "the labels are swapped"),
            },
        ),
        # The schedule is compared with a fresh copy of aelab's linear_ramp, which the patch cannot reach.
        "tampering": Submission(
            {"capacity": TAMPERING_CAPACITY},
            CAPACITY,
            {"test_capacity": RISING, "test_capacity_hidden": RISING},
        ),
    },
    tampering="tampering",
    totals={"solution": 18, "blank": 0, "forgot_n": 15, "rows_lazy": 13, "swapped_labels": 15, "tampering": 15},
    not_in_release=(
        "BEGIN SOLUTION",
        "BEGIN HIDDEN TESTS",
        "log_qz = torch.logsumexp(pairs.sum(-1), dim=1) - log_nm",
        "order = keys.argsort(dim=0).to(z.device)",
        "return -log_likelihood.mean() + gamma * (kl.mean() - capacity).abs()",
        "always_real = lambda codes",
    ),
    feedback=Feedback(
        "swapped_labels", "test_discriminator_loss_hidden", ("the labels are swapped", "Hidden tests of discriminator_loss")
    ),
    # The longest cell in fast mode trains two small VAEs for 200 steps each: about 10 s on an idle
    # 2-core machine, several times that on a busy one.
    timeout=120,
)
