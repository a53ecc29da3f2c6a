"""The round trip of a05_superposition: a forward pass without the ReLU (plus a dimensionality that only
calls aelab's), a loss without the importance weights, and a wrong superposition measure hidden by
patching aelab."""

from harness import AssignmentSpec, Expect, Feedback, Submission

FORWARD = frozenset({"test_toy_forward", "test_toy_forward_hidden"})
LOSS = frozenset({"test_instance_losses", "test_instance_losses_hidden"})
SUPERPOSITION = frozenset({"test_superposition", "test_superposition_hidden"})
DIMENSIONALITY = frozenset({"test_feature_dimensionality", "test_feature_dimensionality_hidden"})

NO_RELU = '''
def toy_forward(W, b, x):
    """h = W x and x' = W^T h + b, with the ReLU forgotten."""
    hidden = torch.einsum("imn,bin->bim", W, x)
    recon = torch.einsum("imn,bim->bin", W, hidden) + b
    return ToySuperpositionOutput(recon=recon, hidden=hidden)
'''

LAZY_DIMENSIONALITY = "feature_dimensionality = aelab.metrics.feature_dimensionality"

UNWEIGHTED = '''
def instance_losses(x, recon, importance):
    """The squared error of each instance, with the importance weights forgotten."""
    return ((x - recon) ** 2).sum(dim=-1).mean(dim=0)
'''

TAMPERING_SUPERPOSITION = '''
def superposition(W, eps=1e-8):
    """Both columns normalised by mistake, (W_hat_i . W_hat_j)^2, and aelab's replaced, hoping the tests compare against it."""
    unit = W / W.norm(dim=-2, keepdim=True).clamp_min(eps)
    overlaps = (unit.transpose(-1, -2) @ unit).pow(2)
    return overlaps.sum(dim=-1) - torch.diagonal(overlaps, dim1=-2, dim2=-1)


aelab.metrics.superposition = superposition
aelab.metrics.sae.superposition = superposition
'''

SPEC = AssignmentSpec(
    name="a05_superposition",
    points={
        "test_toy_forward": 1,
        "test_toy_forward_hidden": 2,
        "test_instance_losses": 1,
        "test_instance_losses_hidden": 2,
        "test_superposition": 1,
        "test_superposition_hidden": 2,
        "test_feature_dimensionality": 1,
        "test_feature_dimensionality_hidden": 2,
        "test_my_toy_model": 1,
        "test_my_toy_model_hidden": 1,
        "test_training": 2,
    },
    submissions={
        # Without the ReLU the model is linear: the forward cells fail, and training stores only two
        # features where the sparse instance needs superposition, so the trained-model cell fails too.
        # MyToyModel is graded with aelab's parts substituted for the student's and keeps its points.
        # The dimensionality is an alias of aelab's: its tests fail on the check that forbids it.
        "no_relu_lazy": Submission(
            {"toy_forward": NO_RELU, "feature_dimensionality": LAZY_DIMENSIONALITY},
            FORWARD | DIMENSIONALITY | {"test_training"},
            {
                "test_toy_forward": Expect("AssertionError", "the ReLU is missing"),
                "test_feature_dimensionality": Expect("AssertionError", "implement it yourself"),
                "test_training": Expect("AssertionError", "without the ReLU"),
            },
        ),
        # Without the importance weights every dense feature looks alike, so the dense instance does
        # not keep the two most important ones.
        "unweighted": Submission(
            {"instance_losses": UNWEIGHTED},
            LOSS | {"test_training"},
            {
                "test_instance_losses": Expect("AssertionError", "the importance weights are missing"),
                "test_training": Expect("AssertionError", "importance"),
            },
        ),
        # The measures are compared with a fresh copy of aelab's source, which the patch cannot reach;
        # the other cells (training included) do not use the student's superposition.
        "tampering": Submission(
            {"superposition": TAMPERING_SUPERPOSITION},
            SUPERPOSITION,
            {
                "test_superposition": Expect("AssertionError", "both columns are normalised"),
                "test_superposition_hidden": Expect("AssertionError", "differs from the reference"),
            },
        ),
    },
    tampering="tampering",
    totals={"solution": 16, "blank": 0, "no_relu_lazy": 8, "unweighted": 11, "tampering": 13},
    not_in_release=(
        "BEGIN SOLUTION",
        "BEGIN HIDDEN TESTS",
        'recon = torch.relu(torch.einsum("imn,bim->bin", W, hidden) + b)',
        "(importance * (x - recon) ** 2).sum(dim=-1).mean(dim=0)",
        "W2[1] += 1.0",
    ),
    feedback=Feedback(
        "unweighted", "test_instance_losses_hidden", ("the importance weights are missing", "Hidden tests of instance_losses")
    ),
    # Every a05 cell takes a few seconds in fast mode; training (1000 steps of a tiny model) about 3.
    timeout=45,
)
