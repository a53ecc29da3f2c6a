"""The round trip of a04_sequences: a trend on raw time steps instead of t / T, seasons that alternate
every step instead of being held for L steps (both also spoil the TimeVAE trained with them), a
similarity loss that detaches one of its inputs, a scene discriminator with swapped targets, and a
pose adversarial loss aimed at 1 instead of 1/2 hidden by patching aelab's DRNET.loss."""

from harness import AssignmentSpec, Expect, Feedback, Submission

TREND = frozenset({"test_trend", "test_trend_hidden"})
SEASONAL = frozenset({"test_seasonal", "test_seasonal_hidden"})
ADV = frozenset({"test_pose_adversarial", "test_pose_adversarial_hidden"})
DISC = frozenset({"test_scene_discriminator", "test_scene_discriminator_hidden"})

RAW_TIME = '''
def trend_component(theta, seq_len):
    """The polynomial on raw time steps t = 0..T-1: time not normalised."""
    t = torch.arange(seq_len, dtype=theta.dtype)
    basis = torch.stack([t ** (p + 1) for p in range(theta.shape[-1])])
    return (theta @ basis).transpose(1, 2)
'''

ALTERNATING = '''
def seasonal_component(values, seq_len, season_length):
    """Seasons indexed by t mod S: a new season every step instead of every season_length steps."""
    index = torch.arange(seq_len) % values.shape[-1]
    return values[:, :, index].transpose(1, 2)
'''

DETACHED = '''
def similarity_loss(content, content_other):
    """The right value, but the second content vector is treated as a constant target."""
    return (content - content_other.detach()).pow(2).sum(dim=-1).mean()
'''

SWAPPED = '''
def scene_discriminator_loss(scene_logits, pose, pair_frames):
    """Same-clip pairs labelled 0 and two-clip pairs 1."""
    B = pose.shape[0]
    if B < 2:
        raise ValueError("need two clips")
    rows = torch.arange(B)
    first = pose[rows, pair_frames[:, 0]]
    logits = scene_logits(torch.cat([first, first]), torch.cat([pose[rows, pair_frames[:, 1]], pose[(rows + 1) % B, pair_frames[:, 1]]]))
    target = torch.cat([torch.zeros(B), torch.ones(B)])
    return F.binary_cross_entropy_with_logits(logits, target), ((logits > 0).float() == target).float().mean()
'''

TAMPERING_ADV = '''
def pose_adversarial_loss(scene_logits):
    """A GAN generator's target 1 instead of 1/2, and aelab's DRNET.loss patched to agree, hoping the tests compare against it."""
    return F.binary_cross_entropy_with_logits(scene_logits, torch.ones_like(scene_logits))


import aelab.vae.drnet

_original_loss = aelab.vae.drnet.DRNET.loss


def _patched_loss(self, batch, out):
    loss = _original_loss(self, batch, out)
    loss.terms["adv"] = pose_adversarial_loss(out.scene_logits).detach()
    return loss


aelab.vae.drnet.DRNET.loss = _patched_loss
'''

SPEC = AssignmentSpec(
    name="a04_sequences",
    points={
        "test_trend": 1,
        "test_trend_hidden": 2,
        "test_seasonal": 1,
        "test_seasonal_hidden": 2,
        "test_similarity": 1,
        "test_similarity_hidden": 1,
        "test_pose_adversarial": 1,
        "test_pose_adversarial_hidden": 1,
        "test_scene_discriminator": 1,
        "test_scene_discriminator_hidden": 2,
        "test_training": 2,
    },
    submissions={
        # Raw time makes t^2 reach 529: the test names the mistake, and aelab's TimeVAE with the weights
        # learned on that basis reconstructs nothing.
        "raw_time": Submission(
            {"trend_component": RAW_TIME},
            TREND | {"test_training"},
            {
                "test_trend": Expect("AssertionError", "time is not normalised"),
                "test_trend_hidden": Expect("AssertionError", "time is not normalised"),
                "test_training": Expect("AssertionError", "unexplained"),
            },
        ),
        # Period S instead of S L: the block cannot express the data's period-12 pattern.
        "alternating_seasons": Submission(
            {"seasonal_component": ALTERNATING},
            SEASONAL | {"test_training"},
            {
                "test_seasonal": Expect("AssertionError", "the seasons alternate every step"),
                "test_seasonal_hidden": Expect("AssertionError", "the seasons alternate every step"),
            },
        ),
        # The value is right (the visible test passes); the hidden gradient check catches the detach.
        "detached_similarity": Submission(
            {"similarity_loss": DETACHED},
            frozenset({"test_similarity_hidden"}),
            {"test_similarity_hidden": Expect("AssertionError", "no gradient with respect to content_other")},
        ),
        "swapped_targets": Submission(
            {"scene_discriminator_loss": SWAPPED},
            DISC,
            {"test_scene_discriminator": Expect("AssertionError", "the targets are swapped")},
        ),
        # The reference is a fresh copy of drnet.py, which the patch of DRNET.loss cannot reach.
        "tampering": Submission(
            {"pose_adversarial_loss": TAMPERING_ADV},
            ADV,
            {
                "test_pose_adversarial": Expect("AssertionError", "the target is 1 (fooling the discriminator) instead of 1/2"),
                "test_pose_adversarial_hidden": Expect("AssertionError", "the target is 1 (fooling the discriminator) instead of 1/2"),
            },
        ),
    },
    tampering="tampering",
    totals={"solution": 15, "blank": 0, "raw_time": 10, "alternating_seasons": 10, "detached_similarity": 14,
            "swapped_targets": 12, "tampering": 13},
    not_in_release=(
        "BEGIN SOLUTION",
        "BEGIN HIDDEN TESTS",
        "tau = torch.arange(seq_len, dtype=theta.dtype, device=theta.device) / seq_len  # (T,): t / T in [0, 1)",
        "index = (torch.arange(seq_len, device=values.device) // season_length) % n_seasons  # (T,): the season of each step",
        "other = pose[(rows + 1) % B, pair_frames[:, 1]]  # h_p^{t2} of the next clip",
        "expected = torch.zeros(2, 3, 4).index_add_(2, (torch.arange(10) // 3) % 4, weights.transpose(1, 2))",
    ),
    feedback=Feedback(
        "swapped_targets", "test_scene_discriminator_hidden", ("the targets are swapped", "Hidden tests of scene_discriminator_loss")
    ),
    # Every a04 cell takes under a second in fast mode except training (600 steps of a small TimeVAE, about 6 s).
    timeout=45,
)
