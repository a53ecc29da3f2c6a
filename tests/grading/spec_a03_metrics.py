"""The round trip of a03_metrics: a MIG without the entropy, DCI's two scores swapped, FactorVAE votes on
codes that are not normalised (plus a MIG that only calls aelab's), and a mutual information in bits
hidden by patching aelab."""

from harness import AssignmentSpec, Expect, Feedback, Submission

MI = frozenset({"test_mutual_information", "test_mutual_information_hidden"})
MIG = frozenset({"test_mig", "test_mig_hidden"})
DCI = frozenset({"test_dci_scores", "test_dci_scores_hidden"})
FACTOR_VAE = frozenset({"test_factor_vae_score", "test_factor_vae_score_hidden"})

NO_ENTROPY = '''
def mig(codes, factors, bins=20):
    """The gaps between the two most informative codes, in nats, not divided by the factor's entropy."""
    binned = discretize(codes, bins)
    factors = np.asarray(factors)
    mi = np.array([[mutual_information(binned[:, j], factors[:, k]) for k in range(factors.shape[1])] for j in range(binned.shape[1])])
    top = np.sort(mi, axis=0)[::-1]
    return float((top[0] - top[1]).mean())
'''

SWAPPED_DC = '''
def dci_scores(importance):
    """Disentanglement from the columns and completeness from the rows: the two scores swapped."""
    R = np.asarray(importance, dtype=np.float64)
    d, K = R.shape

    def normalised_entropy(p, axis, base):
        total = p.sum(axis=axis, keepdims=True)
        q = np.where(total > 0, p / np.where(total > 0, total, 1.0), 1.0 / p.shape[axis])
        terms = np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0)
        return -terms.sum(axis=axis) / np.log(base)

    rho = R.sum(1) / R.sum() if R.sum() > 0 else np.zeros(d)
    return float((1.0 - normalised_entropy(R, axis=0, base=d)).mean()), float((rho * (1.0 - normalised_entropy(R, axis=1, base=K))).sum())
'''

UNNORMALISED = '''
def factor_vae_score_from_votes(z, fixed, global_std, active, n_train, n_factors):
    """The majority vote on raw variances: the codes are not divided by global_std."""
    z, active = np.asarray(z, dtype=np.float64), np.asarray(active, dtype=bool)
    table = np.zeros((z.shape[2], n_factors), dtype=np.int64)
    if not active.any():
        return 0.0, table
    dims = np.flatnonzero(active)[z[:, :, active].var(axis=1, ddof=1).argmin(axis=1)]
    np.add.at(table, (dims[:n_train], fixed[:n_train]), 1)
    return float((table.argmax(axis=1)[dims[n_train:]] == fixed[n_train:]).mean()), table
'''

LAZY_MIG = '''
def mig(codes, factors, bins=20):
    """The MIG, by calling aelab's."""
    return aelab.metrics.mig(codes, factors, bins).score
'''

TAMPERING_BITS = '''
def mutual_information(a, b):
    """The plug-in estimate in bits (log2), and aelab's replaced by it, hoping the tests compare against it."""
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    joint = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(joint, (a, b), 1.0)
    joint /= a.size
    pa, pb = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log2(joint[nz] / (pa * pb)[nz])).sum())


aelab.metrics.disentanglement._mutual_information = mutual_information
aelab.metrics.disentanglement.mutual_information_matrix = lambda codes, factors, bins=20: None
'''

SPEC = AssignmentSpec(
    name="a03_metrics",
    points={
        "test_mutual_information": 1,
        "test_mutual_information_hidden": 1,
        "test_mig": 1,
        "test_mig_hidden": 2,
        "test_dci_scores": 1,
        "test_dci_scores_hidden": 2,
        "test_factor_vae_score": 1,
        "test_factor_vae_score_hidden": 2,
        "test_use": 2,
    },
    submissions={
        # Part 5 only compares two codes with the student's metrics: a MIG in nats still ranks them
        # right, so only the MIG cells are lost; the same holds for the swapped DCI scores.
        "no_entropy": Submission(
            {"mig": NO_ENTROPY},
            MIG,
            {"test_mig": Expect("AssertionError", "the gaps are not divided by the entropy H(v_k)")},
        ),
        "swapped_dc": Submission(
            {"dci_scores": SWAPPED_DC},
            DCI,
            {"test_dci_scores": Expect("AssertionError", "disentanglement and completeness are swapped")},
        ),
        # Votes on raw variances pick the code of smallest scale; part 5's codes share one scale, so its
        # ranking survives. The MIG only calls aelab's: its tests fail on the check that forbids it.
        "unnormalised_lazy": Submission(
            {"factor_vae_score_from_votes": UNNORMALISED, "mig": LAZY_MIG},
            FACTOR_VAE | MIG,
            {
                "test_factor_vae_score": Expect("AssertionError", "the codes are not divided by global_std"),
                "test_factor_vae_score_hidden": Expect("AssertionError", "differs from the reference"),
                "test_mig": Expect("AssertionError", "implement it yourself"),
            },
        ),
        # Compared with a fresh copy of aelab's source, which the patch cannot reach; bits cancel in the
        # MIG's ratio, so part 5 keeps its points.
        "tampering": Submission(
            {"mutual_information": TAMPERING_BITS},
            MI,
            {
                "test_mutual_information": Expect("AssertionError", "in bits (log2) instead of nats"),
                "test_mutual_information_hidden": Expect("AssertionError", "differs from the reference"),
            },
        ),
    },
    tampering="tampering",
    totals={"solution": 13, "blank": 0, "no_entropy": 10, "swapped_dc": 10, "unnormalised_lazy": 7, "tampering": 11},
    not_in_release=(
        "BEGIN SOLUTION",
        "BEGIN HIDDEN TESTS",
        "top = np.sort(mi, axis=0)[::-1]  # each factor's column, largest first",
        "dims = np.flatnonzero(active)[spread.argmin(axis=1)]",
        'check_close(pair(dci_scores(np.zeros((3, 2)))), pair([0.0, 0.0])',
    ),
    feedback=Feedback(
        "swapped_dc", "test_dci_scores_hidden", ("dci_scores of a sparse random", "Hidden tests of dci_scores")
    ),
    # Every a03 cell takes a few seconds in fast mode (part 5, with aelab's lasso DCI, the longest).
    timeout=60,
)
