"""What every sparse autoencoder shares: parameters, normalisation, decoder constraint, dead latents.

An SAE maps an activation x (d_in,) to a sparse code f (d_sae,) and back:

    pre   = (s x - b_dec) W_enc + b_enc          (subtracting b_dec is the optional pre-encoder bias)
    f     = sigma(pre)                           (ReLU, TopK, JumpReLU, ...: what each model file defines)
    x_hat = (f W_dec + b_dec) / s

with W_enc (d_in, d_sae), b_enc (d_sae,), W_dec (d_sae, d_in) whose row i is latent i's direction,
b_dec (d_in,), and s a scalar activation normalisation (1 unless ``normalize_activations``).
Losses are measured on the normalised activations s x, so coefficients transfer between layers
and models.

``train_step`` adds, around the usual forward/backward/update:

* on the first batch, ``initialize``: s such that E ||s x||^2 = 1 and b_dec at the geometric median
  of the batch (Bricken et al. 2023), unless ``initialize`` was called on a larger sample before;
* the sparsity coefficient warm-up (a linear ramp from 0 over ``sparsity_warmup_steps``; Conerly et
  al. 2024, Anthropic's April update), passed to ``loss`` as ``sparsity_scale``;
* with ``unit_norm_decoder``, the gradient reaching W_dec loses its component parallel to each row
  (``aelab.functional.remove_parallel_grad``) and the rows are renormalised after the step;
* a count of the steps since each latent last fired, ``steps_since_fired``; ``dead_latents()`` are
  those silent for ``dead_steps`` steps (used by AuxK and by resampling).

Learning-rate warm-up and decay come from ``aelab.fit(..., schedule=aelab.train.warmup_cosine(...))``.
Parameters start with unit-norm decoder rows in random directions and W_enc = W_dec^T, b_enc = 0.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aelab import _env
from aelab.functional import geometric_median, remove_parallel_grad, scaled_squared_error
from aelab.nn.base import Loss, Model
from aelab.train import distributed
from aelab.train.schedules import linear_ramp

B_DEC_INITS = ("geometric_median", "mean", "zeros")


@dataclass
class SAEConfig:
    d_in: int = 64
    """Dimension of the activations the SAE reads."""
    d_sae: int = 512
    """Number of latents (dictionary size)."""
    pre_encoder_bias: bool = True
    """Subtract the decoder bias b_dec from the input before encoding (Bricken et al. 2023)."""
    unit_norm_decoder: bool = True
    """Keep every decoder row at unit norm: project its gradient onto the sphere, renormalise after each step."""
    normalize_activations: bool = False
    """Scale inputs by a constant s so that E ||s x||^2 = 1, estimated on the first training batch;
    ``fold_normalisation`` moves s into the weights for export."""
    init_b_dec: str = "geometric_median"
    """Initial decoder bias on the first batch: "geometric_median" (Weiszfeld), "mean" or "zeros"."""
    sparsity_warmup_steps: int = 0
    """Steps over which the sparsity (L1 or L0) coefficient ramps linearly from 0; 0 disables."""
    dead_steps: int = 1000
    """A latent that fired on no example for this many consecutive training steps is dead."""

    def __post_init__(self) -> None:
        if self.d_in < 1 or self.d_sae < 1:
            raise ValueError(f"d_in and d_sae must be >= 1, got {self.d_in} and {self.d_sae}")
        if self.init_b_dec not in B_DEC_INITS:
            raise ValueError(f"init_b_dec must be one of {B_DEC_INITS}, got {self.init_b_dec!r}")
        if self.sparsity_warmup_steps < 0:
            raise ValueError(f"sparsity_warmup_steps must be >= 0, got {self.sparsity_warmup_steps}")
        if self.dead_steps < 1:
            raise ValueError(f"dead_steps must be >= 1, got {self.dead_steps}")

    @property
    def input_shape(self) -> tuple[int]:
        return (self.d_in,)


@dataclass
class SAEOutput:
    """What an SAE's ``forward`` returns."""

    recon: Tensor
    """The reconstruction x_hat in the input's own scale, (B, d_in)."""
    acts: Tensor | None
    """The sparse code f, (B, d_sae). An output given by ``indices`` and ``values`` may be built with
    ``acts=None``: the dense code is then scattered from them on first access (a training step
    that never reads it does not pay for a (B, d_sae) tensor)."""
    pre_acts: Tensor
    """Encoder pre-activations (s x - b_dec) W_enc + b_enc, (B, d_sae)."""
    indices: Tensor | None = None
    """With a fixed number k of candidates per example (TopK on its sparse path): their latents, (B, k)."""
    values: Tensor | None = None
    """The code at ``indices``, (B, k), some possibly 0; ``acts`` is these scattered into (B, d_sae)."""
    l1: Tensor | None = None
    """The (decoder-norm weighted) L1 norm of the code per example, (B,), when the forward pass computed it (ReLU SAE)."""
    l0: Tensor | None = None
    """The L0 of the code per example, (B,), when the forward pass computed it (JumpReLU SAE: with the
    pseudo-gradient of ``heaviside_step`` for the thresholds; ReLU SAE: counted by its fused forward)."""
    fired: Tensor | None = None
    """Latents non-zero on at least one example, (d_sae,) bool, when the forward pass counted them
    (the fused forward of the ReLU and JumpReLU SAEs)."""

    def __getattribute__(self, name: str):
        value = object.__getattribute__(self, name)
        if name == "acts" and value is None and object.__getattribute__(self, "indices") is not None:
            pre = object.__getattribute__(self, "pre_acts")
            values = object.__getattribute__(self, "values")
            value = values.new_zeros(pre.shape).scatter_(-1, object.__getattribute__(self, "indices"), values)
            object.__setattr__(self, "acts", value)
        return value


def code_l0(out) -> Tensor:
    """Non-zero latents per example of an SAE output, (B,) float; from its (B, k) code when it has one (cheaper)."""
    if getattr(out, "l0", None) is not None:  # counted by the forward pass
        return out.l0.detach().float()
    if getattr(out, "indices", None) is None:  # |sign| summed: two passes over the code, no bool-to-integer copy
        return torch.sign(out.acts.detach()).abs_().sum(-1, dtype=torch.float32)
    return (out.values.detach() != 0).sum(-1).float()


def code_fired(out) -> Tensor:
    """Latents of an SAE output non-zero on at least one example of the batch, (d_sae,) bool."""
    if getattr(out, "fired", None) is not None:  # counted by the forward pass
        return out.fired
    if getattr(out, "indices", None) is None:  # two reads of the code (a != 0 and any() would also write a mask)
        acts = out.acts.detach()
        if acts.shape[0] == 0:
            return torch.zeros(acts.shape[-1], dtype=torch.bool, device=acts.device)
        return (acts.amax(0) > 0) | (acts.amin(0) < 0)
    counts = torch.zeros(out.pre_acts.shape[-1], dtype=torch.int32, device=out.pre_acts.device)
    return counts.index_add_(0, out.indices.flatten(), (out.values.detach().flatten() != 0).int()) > 0


def _key(t: Tensor) -> tuple[int, int]:
    """Which tensor object, and how many in-place changes it has seen: equal keys, same values."""
    return id(t), t._version


class _DeadWatch:
    """Knows on the host that no latent is dead, without making it wait for the device (CUDA).

    After each training step, ``record`` starts a copy of near = (steps_since_fired >= dead_steps -
    LAG).any() to the host without blocking. If near was False after step t, no latent can be dead
    before step t + LAG has run (``after_step`` adds at most 1 to a counter), so ``none_dead``
    answers from a flag of the last LAG steps that the device has already written: the host waits
    only when it is more than LAG steps ahead. Any other change to the counters (a resample, a
    ``load_state_dict``, a hand edit, a move to another device) is seen by its tensor version and
    drops the flags; ``none_dead`` then reads ``dead.any()`` once.
    """

    LAG = 4

    def __reduce__(self):  # a copy or a pickle starts empty: CUDA events and pinned flags do not travel
        return _DeadWatch, ()

    def __init__(self):
        self.flags: list[tuple[int, Any, Any]] = []  # (step count, host bool as a NumPy view, CUDA event or None)
        self.count, self.key = 0, None

    def record(self, steps_since_fired: Tensor, dead_steps: int, before: tuple[int, int]) -> None:
        """After ``after_step`` moved the counters from the state with key ``before``."""
        if before != self.key:
            self.flags.clear()
        near = (steps_since_fired >= dead_steps - self.LAG).any()
        event = None
        if near.device.type == "cuda":
            pinned = torch.empty((), dtype=torch.bool, pin_memory=True)
            pinned.copy_(near, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            near = pinned
        host = near.numpy()  # a view of host memory: reading it never waits for a device (once the event is done)
        self.count += 1
        self.flags = [f for f in self.flags if self.count - f[0] <= self.LAG] + [(self.count, host, event)]
        self.key = _key(steps_since_fired)

    def none_dead(self, steps_since_fired: Tensor, dead_steps: int) -> bool:
        """True: no latent is dead now. False: some latent is, or may be (read ``dead_latents()``)."""
        if _key(steps_since_fired) == self.key and self.flags:  # ``record`` keeps the flags of the last LAG steps only
            ready = [f for f in self.flags if f[2] is None or f[2].query()]
            _, host, event = ready[-1] if ready else self.flags[0]
            if event is not None and not ready:
                event.synchronize()
            if not bool(host):
                return True
            if not _env.host_sync_is_cheap(steps_since_fired.device):
                return False
        return not bool((steps_since_fired >= dead_steps).any())


class SAE(Model):
    """Base class of the sparse autoencoders: subclasses define ``activation`` and ``loss``."""

    Config = SAEConfig

    def __init__(self, config: SAEConfig):
        super().__init__(config)
        W_dec = F.normalize(torch.randn(config.d_sae, config.d_in), dim=1)
        self.W_enc = nn.Parameter(W_dec.T.clone())  # (d_in, d_sae)
        self.b_enc = nn.Parameter(torch.zeros(config.d_sae))
        self.W_dec = nn.Parameter(W_dec)  # (d_sae, d_in)
        self.b_dec = nn.Parameter(torch.zeros(config.d_in))
        self.register_buffer("input_scale", torch.ones(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.register_buffer("steps_since_fired", torch.zeros(config.d_sae, dtype=torch.long))
        self._dead_watch = _DeadWatch()
        self._host_values: dict[str, tuple[tuple[int, int], Any]] = {}  # buffer name -> (its key, its value)

    # -- the model ---------------------------------------------------------------------------------
    def decoder_weight(self) -> Tensor:
        """W_dec as the forward pass uses it: with its gradient projected onto the sphere when rows are unit norm."""
        if self.config.unit_norm_decoder and torch.is_grad_enabled() and self.W_dec.requires_grad:
            return remove_parallel_grad(self.W_dec)
        return self.W_dec

    def normalize(self, x: Tensor) -> Tensor:
        """Raw activations -> the normalised ones the SAE works on, s x."""
        return x * self.input_scale

    def encoder_input(self, x_n: Tensor) -> Tensor:
        """s x - b_dec with the pre-encoder bias, else s x: (B, d_in)."""
        return x_n - self.b_dec if self.config.pre_encoder_bias else x_n

    def pre_activations(self, x_n: Tensor) -> Tensor:
        """(B, d_in) normalised -> (B, d_sae)."""
        return torch.addmm(self.b_enc, self.encoder_input(x_n), self.W_enc)

    def activation(self, pre: Tensor) -> Tensor:  # pragma: no cover - every SAE overrides it
        """Pre-activations (B, d_sae) -> sparse code (B, d_sae)."""
        raise NotImplementedError

    def encode(self, x: Tensor) -> Tensor:
        """Raw activations (B, d_in) -> sparse code (B, d_sae)."""
        return self.activation(self.pre_activations(self.normalize(self.check_input(x))))

    def decode(self, acts: Tensor) -> Tensor:
        """Sparse code (B, d_sae) -> reconstruction in the input's scale (B, d_in)."""
        return self.reconstruction(acts @ self.decoder_weight())

    def reconstruction(self, decoded: Tensor) -> Tensor:
        """f W_dec (B, d_in), however it was computed (dense, sparse or fused) -> x_hat = (f W_dec + b_dec) / s."""
        return (decoded + self.b_dec).div_(self.input_scale)  # in place: one (B, d_in) buffer, the same gradient

    def forward(self, x: Tensor) -> SAEOutput:
        pre = self.pre_activations(self.normalize(self.check_input(x)))
        acts = self.activation(pre)
        return SAEOutput(recon=self.decode(acts), acts=acts, pre_acts=pre)

    # -- the objective -----------------------------------------------------------------------------
    def reconstruction_error(self, x: Tensor, recon: Tensor) -> Tensor:
        """||s x - s x_hat||^2 per example, summed over d_in on the normalised scale: (B,)."""
        return scaled_squared_error(x, recon, self.input_scale)

    def common_terms(self, x: Tensor, out: SAEOutput, recon_error: Tensor) -> dict[str, Tensor]:
        """Logged with every SAE loss: ``recon`` (batch mean), ``l0`` (mean non-zeros per example), ``fvu``."""
        terms = {"recon": recon_error.mean(), "l0": code_l0(out).mean()}
        if x.shape[0] > 1:  # FVU needs a batch mean to compare with; ||s x - mean(s x)||^2 = s^2 ||x - mean(x)||^2
            x = x.detach()
            total = torch.linalg.vector_norm(x - x.mean(0), dtype=recon_error.dtype).square() * self.input_scale.square()
            terms["fvu"] = recon_error.detach().sum() / total.clamp_min(1e-12)
        return terms

    def loss(self, batch: Any, out: SAEOutput, sparsity_scale: float = 1.0) -> Loss:
        """Squared reconstruction error on the normalised scale: summed over d_in, mean over the batch.

        Subclasses add their sparsity terms, multiplied by ``sparsity_scale`` (the warm-up factor
        ``train_step`` passes; 1 otherwise).
        """
        x = self.inputs(batch)
        err = self.reconstruction_error(x, out.recon)
        return Loss(err.mean(), self.common_terms(x, out, err))

    def sparsity_scale(self, step: int) -> float:
        """Multiplier of the sparsity coefficient at a training step: the linear warm-up from 0."""
        return linear_ramp(self.config.sparsity_warmup_steps)(step)

    # -- training ----------------------------------------------------------------------------------
    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set the normalisation s and the decoder bias b_dec from a sample of raw activations (N, d_in).

        ``train_step`` calls it on the first batch; call it yourself on a larger sample before
        training for a better estimate (a second call re-estimates both).
        """
        x = self.check_input(x).float()
        if self.config.normalize_activations:
            mean_sq = x.pow(2).sum(1).mean()
            if mean_sq == 0:
                raise ValueError("cannot normalise activations that are all zero; check the activation sample")
            self.input_scale.fill_(mean_sq.rsqrt().item())
        x_n = self.normalize(x)
        if self.config.init_b_dec == "geometric_median":
            self.b_dec.copy_(geometric_median(x_n))
        elif self.config.init_b_dec == "mean":
            self.b_dec.copy_(x_n.mean(0))
        self.fill_buffer("initialized", True)

    def dead_latents(self) -> Tensor:
        """Latents that fired on no example for ``dead_steps`` consecutive training steps, (d_sae,) bool."""
        return self.steps_since_fired >= self.config.dead_steps

    def read_buffer(self, name: str) -> Any:
        """The 0-dim buffer ``name`` as a Python value, read from the device only when it changed since this
        model last read or filled it (seen by the tensor's object and version): once, not every step, which
        on CUDA would make the host wait for the device each time."""
        t, known = getattr(self, name), self._host_values.get(name)
        if known is None or known[0] != _key(t):
            known = self._host_values[name] = (_key(t), t.item())
        return known[1]

    def fill_buffer(self, name: str, value: Any) -> None:
        """Fill the 0-dim buffer ``name`` with ``value``, which ``read_buffer`` then returns without a read."""
        t = getattr(self, name)
        t.fill_(value)
        self._host_values[name] = (_key(t), value)

    def surely_no_dead_latents(self) -> bool:
        """True when no latent is dead; False when some latent is, or may be (then read ``dead_latents()``).

        Exact on the CPU. On CUDA it answers from flags the training steps copied to the host
        (``_DeadWatch``), so it does not make the host wait for the device; there it says False
        ("may be") within ``_DeadWatch.LAG`` steps of a latent reaching ``dead_steps``.
        """
        return self._dead_watch.none_dead(self.steps_since_fired, self.config.dead_steps)

    def before_step(self, x: Tensor, ctx) -> None:
        """Hook run before the forward pass of a training step (the k schedule of ``ksparse_ae``)."""

    @torch.no_grad()
    def after_step(self, x: Tensor, out: SAEOutput, ctx) -> None:
        """Non-gradient updates after the optimiser step: decoder renormalisation, firing counters."""
        if self.config.unit_norm_decoder:
            # F.normalize(W_dec, dim=1) written in place: the same division, one pass instead of a new tensor and a copy
            self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))
        self.steps_since_fired.add_(1).masked_fill_(distributed.any_across(code_fired(out)), 0)

    def train_step(self, batch: Any, ctx) -> Loss:
        """``initialize`` on the first batch, forward, loss with the warmed-up sparsity coefficient, update, ``after_step``."""
        x = self.check_input(self.inputs(batch))
        if not self.read_buffer("initialized"):
            self.initialize(distributed.all_gather_rows(x))  # the whole batch when processes share it
        self.before_step(x, ctx)
        with ctx.autocast():
            out = ctx.model(*self.forward_args(batch))
            loss = self.loss(batch, out, sparsity_scale=self.sparsity_scale(ctx.step))
        ctx.update(loss.total)
        before = _key(self.steps_since_fired)
        self.after_step(x, out, ctx)
        self._dead_watch.record(self.steps_since_fired, self.config.dead_steps, before)
        return loss

    # -- export ------------------------------------------------------------------------------------
    def export_state_dict(self) -> dict[str, Tensor]:
        """The state ``aelab.save`` writes: a folded copy's (see ``fold_normalisation``); this model is unchanged."""
        if float(self.input_scale) == 1.0:
            return self.state_dict()
        return copy.deepcopy(self).fold_normalisation().state_dict()

    @torch.no_grad()
    def fold_normalisation(self) -> SAE:
        """Move the input scale s into the weights, so the SAE reads raw activations with s = 1.

        W_enc <- s W_enc, W_dec <- W_dec / s, b_dec <- b_dec / s gives the same pre-activations,
        code and reconstruction on raw inputs. ``aelab.save`` writes a folded copy by itself
        (``export_state_dict``), so a saved SAE needs no normalisation step. The decoder rows then
        have norm 1 / s: fold after training, not before (``train_step`` would renormalise them).
        """
        s = self.input_scale.clone()
        self.W_enc.mul_(s)
        self.W_dec.div_(s)
        self.b_dec.div_(s)
        self.input_scale.fill_(1.0)
        return self
