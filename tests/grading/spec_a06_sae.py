"""The round trip of a06_sae: an L1 penalty without the decoder norms, a TopK that keeps negative
pre-activations (plus L0 and dead fraction that only call aelab's), a JumpReLU pseudo-derivative with
the wrong sign, and an FVU normalised around 0 instead of the mean hidden by patching aelab."""

from harness import AssignmentSpec, Expect, Feedback, Submission

RELU_LOSS = frozenset({"test_relu_sae_loss", "test_relu_sae_loss_hidden"})
TOPK = frozenset({"test_topk_forward", "test_topk_forward_hidden"})
JUMPRELU = frozenset({"test_jumprelu", "test_jumprelu_hidden"})
FVU = frozenset({"test_fvu", "test_fvu_hidden"})
STATS = frozenset({"test_sparsity_stats", "test_sparsity_stats_hidden"})

PLAIN_L1 = '''
def relu_sae_loss(x, recon, acts, W_dec, l1_coefficient):
    """The squared error plus a plain L1 penalty: the decoder norms forgotten."""
    return (x - recon).pow(2).sum(dim=-1) + l1_coefficient * acts.abs().sum(dim=-1)
'''

TOPK_NEGATIVES = '''
def topk_sae_forward(x, W_enc, b_enc, W_dec, b_dec, k):
    """TopK without the ReLU: a negative pre-activation among the k largest stays in the code."""
    pre = (x - b_dec) @ W_enc + b_enc
    values, indices = torch.topk(pre, k, dim=-1)
    acts = torch.zeros_like(pre).scatter(-1, indices, values)
    return SAEOutput(recon=acts @ W_dec + b_dec, acts=acts, pre_acts=pre)
'''

LAZY_STATS = '''
l0 = aelab.metrics.l0
dead_fraction = aelab.metrics.dead_fraction
'''

WRONG_SIGN = '''
class JumpReLUFunction(torch.autograd.Function):
    """The JumpReLU with the pseudo-derivative's sign flipped: +(theta / eps) K."""

    @staticmethod
    def forward(ctx, z, threshold, bandwidth):
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return z * (z > threshold).to(z.dtype)

    @staticmethod
    def backward(ctx, grad):
        z, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        inside = ((z - threshold).abs() < eps / 2).to(z.dtype)
        return grad * (z > threshold).to(z.dtype), (grad * (threshold / eps) * inside).sum(dim=0), None


def my_jumprelu(z, threshold, bandwidth):
    return JumpReLUFunction.apply(z, threshold, bandwidth)
'''

TAMPERING_FVU = '''
def fvu(x, recon):
    """The error over the raw second moment sum x^2 (not centred), and aelab's replaced, hoping the tests compare against it."""
    return (x - recon).pow(2).sum() / x.pow(2).sum()


aelab.metrics.fvu = fvu
aelab.metrics.sae.fvu = fvu
'''

SPEC = AssignmentSpec(
    name="a06_sae",
    points={
        "test_relu_sae_loss": 1,
        "test_relu_sae_loss_hidden": 2,
        "test_topk_forward": 1,
        "test_topk_forward_hidden": 2,
        "test_jumprelu": 1,
        "test_jumprelu_hidden": 2,
        "test_fvu": 1,
        "test_fvu_hidden": 2,
        "test_sparsity_stats": 1,
        "test_sparsity_stats_hidden": 1,
        "test_my_topk_sae": 1,
        "test_my_topk_sae_hidden": 1,
        "test_training": 2,
    },
    submissions={
        # Without the decoder norms the penalty differs wherever a decoder row is not of unit length.
        "plain_l1": Submission(
            {"relu_sae_loss": PLAIN_L1},
            RELU_LOSS,
            {
                "test_relu_sae_loss": Expect("AssertionError", "the decoder norms are missing"),
                "test_relu_sae_loss_hidden": Expect("AssertionError", "the decoder norms are missing"),
            },
        ),
        # Keeping negative pre-activations changes the code where fewer than k are positive. On the toy
        # activations the k largest are almost always positive, so the SAE still trains (the training
        # cell keeps its points), and MyTopKSAE is graded with aelab's forward in place of the student's.
        # L0 and the dead fraction are aliases of aelab's: their tests fail on the check that forbids it.
        "topk_negatives_lazy": Submission(
            {"topk_sae_forward": TOPK_NEGATIVES, "sparsity_stats": LAZY_STATS},
            TOPK | STATS,
            {
                "test_topk_forward": Expect("AssertionError", "the ReLU is missing"),
                "test_topk_forward_hidden": Expect("AssertionError", "the ReLU is missing"),
                "test_sparsity_stats": Expect("AssertionError", "implement it yourself"),
            },
        ),
        # The forward pass and the z gradient are right; only the threshold gradient has the wrong sign.
        "jumprelu_sign": Submission(
            {"jumprelu": WRONG_SIGN},
            JUMPRELU,
            {
                "test_jumprelu": Expect("AssertionError", "the pseudo-derivative has the wrong sign"),
                "test_jumprelu_hidden": Expect("AssertionError", "the pseudo-derivative has the wrong sign"),
            },
        ),
        # The FVU is compared with a fresh copy of aelab's source, which the patch cannot reach; the
        # training test measures the held-out FVU with that fresh copy too.
        "tampering": Submission(
            {"fvu": TAMPERING_FVU},
            FVU,
            {
                "test_fvu": Expect("AssertionError", "the variance is measured around 0 instead of around the mean"),
                "test_fvu_hidden": Expect("AssertionError", "differs from the reference"),
            },
        ),
    },
    tampering="tampering",
    totals={"solution": 18, "blank": 0, "plain_l1": 15, "topk_negatives_lazy": 13, "jumprelu_sign": 15, "tampering": 15},
    not_in_release=(
        "BEGIN SOLUTION",
        "BEGIN HIDDEN TESTS",
        "l1 = (acts.abs() * decoder_norms).sum(dim=-1)  # (B,)",
        "acts = torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))  # (B, d_sae)",
        "grad_threshold = (grad * -(threshold / eps) * kernel).sum(dim=0)  # (d,): summed over the batch",
        "total = (x - x.mean(dim=0)).pow(2).sum()  # around the mean of each dimension",
        'ref_jumprelu = reference("aelab.functional.sparsity.jumprelu")',
    ),
    feedback=Feedback(
        "plain_l1", "test_relu_sae_loss_hidden", ("the decoder norms are missing", "Hidden tests of relu_sae_loss")
    ),
    # Every a06 cell takes under a second in fast mode except training (600 steps of a 16 -> 64 SAE, about 6 s).
    timeout=45,
)
