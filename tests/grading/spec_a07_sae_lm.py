"""The round trip of a07_sae_lm: a hook on the input of the block instead of its output, a top k over
the latents of each position instead of over the positions of each latent together with an SAE spliced
into the block's input, and a CE-loss recovered divided by the zero-ablated loss alone, hidden by patching aelab."""

from harness import AssignmentSpec, Expect, Feedback, Submission

COLLECT = frozenset({"test_collect", "test_collect_hidden"})
RECOVERED = frozenset({"test_ce_recovered", "test_ce_recovered_hidden"})
SPLICED = frozenset({"test_spliced", "test_spliced_hidden"})
TOP = frozenset({"test_top_activating", "test_top_activating_hidden"})

HOOK_INPUT = '''
def collect_activations(model, input_ids, layer):
    """A forward pre-hook: it reads what enters block `layer`, the output of block layer - 1."""
    captured = []

    def hook(module, args, kwargs):
        captured.append((args[0] if args else kwargs["hidden_states"]).detach())

    handle = model.model.layers[layer].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            model(input_ids=input_ids, use_cache=False)
    finally:
        handle.remove()
    return captured[0]
'''

WRONG_AXIS = '''
def top_activating(latents, k):
    """The top k over the latents of each position, (B*T, k), instead of over the positions of each latent."""
    values, rows = latents.reshape(-1, latents.shape[-1]).topk(k, dim=1)
    return values, rows
'''

SPLICE_INPUT = '''
def spliced_loss(model, input_ids, layer, sae):
    """The reconstruction replaces the input of block `layer` (a pre-hook), not its output."""
    def hook(module, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        recon = sae(h.reshape(-1, h.shape[-1])).recon.reshape(h.shape)
        if args:
            return (recon, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": recon}

    handle = model.model.layers[layer].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            logits = model(input_ids=input_ids, use_cache=False).logits
    finally:
        handle.remove()
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), input_ids[:, 1:].reshape(-1))
'''

TAMPERING_RECOVERED = '''
def ce_loss_recovered(clean, spliced, zero_ablated):
    """(L_zero - L_sae) / L_zero, and aelab's replaced, hoping the tests compare against it."""
    clean, spliced, zero = (torch.as_tensor(v, dtype=torch.float64) for v in (clean, spliced, zero_ablated))
    return (zero - spliced) / zero


aelab.metrics.ce_loss_recovered = ce_loss_recovered
aelab.metrics.sae.ce_loss_recovered = ce_loss_recovered
'''

SPEC = AssignmentSpec(
    name="a07_sae_lm",
    points={
        "test_collect": 1,
        "test_collect_hidden": 2,
        "test_ce_recovered": 1,
        "test_ce_recovered_hidden": 2,
        "test_spliced": 1,
        "test_spliced_hidden": 2,
        "test_top_activating": 1,
        "test_top_activating_hidden": 2,
    },
    submissions={
        # The input of block `layer` is the output of block layer - 1: off by one block everywhere.
        "hook_input": Submission(
            {"collect_activations": HOOK_INPUT},
            COLLECT,
            {
                "test_collect": Expect("AssertionError", "the hook reads the input of block `layer`"),
                "test_collect_hidden": Expect("AssertionError", "the hook reads the input of block `layer`"),
            },
        ),
        # Two mistakes in one notebook: the top k over the wrong axis and the SAE spliced into the block's input.
        "wrong_axis_splice_input": Submission(
            {"top_activating": WRONG_AXIS, "spliced_loss": SPLICE_INPUT},
            TOP | SPLICED,
            {
                "test_top_activating": Expect("AssertionError", "the top k ran over the latents of each position"),
                "test_spliced": Expect("AssertionError", "the SAE replaces the input of block `layer`"),
            },
        ),
        # The fraction is compared with a fresh copy of aelab's source, which the patch cannot reach.
        "tampering": Submission(
            {"ce_loss_recovered": TAMPERING_RECOVERED},
            RECOVERED,
            {
                "test_ce_recovered": Expect("AssertionError", "the denominator is L_zero alone"),
                "test_ce_recovered_hidden": Expect("AssertionError", "the denominator is L_zero alone"),
            },
        ),
    },
    tampering="tampering",
    totals={"solution": 12, "blank": 0, "hook_input": 9, "wrong_axis_splice_input": 6, "tampering": 9},
    not_in_release=(
        "BEGIN SOLUTION",
        "BEGIN HIDDEN TESTS",
        "handle = model.model.layers[layer].register_forward_hook(hook)  # the OUTPUT of block `layer`",
        "gap = zero - clean  # what zero-ablation costs over the clean model",
        "recon = sae(h.reshape(-1, h.shape[-1])).recon.reshape(h.shape).to(h.dtype)",
        "values, rows = flat.topk(k, dim=1)  # over positions, for each latent",
        "order = sorted(range(B * T), key=lambda r: -float(flat[r, j]))[:k]",
    ),
    feedback=Feedback(
        "hook_input", "test_collect_hidden", ("the hook reads the input of block", "Hidden tests of collect_activations")
    ),
    # Every a07 cell takes under a few seconds in fast mode (a tiny random Llama; the SAE training about 3 s).
    timeout=45,
)
