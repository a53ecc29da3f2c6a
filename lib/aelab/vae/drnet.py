"""DRNET: disentangled representations of video (Denton & Birodkar 2017, "Unsupervised Learning of
Disentangled Representations from Video").

Two encoders split a frame x^t into a *content* vector h_c = E_c(x^t), meant to stay the same across
a clip (which digits), and a *pose* vector h_p = E_p(x^t), meant to change (where they are); a
decoder D(h_c, h_p) draws the frame back. Three terms make the split happen:

    reconstruction   L_rec = || D(h_c^t, h_p^{t+k}) - x^{t+k} ||^2     content of one frame, pose of another
                     (here by default the Bernoulli cross-entropy instead: see ``recon_loss``)
    similarity       L_sim = || h_c^t - h_c^{t+k} ||^2                  content is constant within a clip
    adversarial      L_adv = -1/2 log C(h_p^t, h_p^{t+k}) - 1/2 log(1 - C(h_p^t, h_p^{t+k}))

C is a *scene discriminator*: given two pose vectors it says whether they come from the same clip.
It is trained with its own optimizer on pairs from one clip (target 1) and from two clips (target 0);
the pose encoder is trained to make it output 1/2 on same-clip pairs (maximum entropy), so that pose
vectors carry nothing that identifies the clip, i.e. no content. ``train_step`` does the main step
(encoders and decoder on L_rec + sim_weight L_sim + adv_weight L_adv), then the discriminator step.

Here a training example is a clip (n_frames, C, H, W): ``forward`` takes the content of one random
frame t of each clip and the pose of *every* frame, and rebuilds the whole clip from them (so every
k = t' - t of the paper's pairs is used at once); the similarity term compares the content of frame
t with that of another random frame of the clip.

Video prediction is a second stage, the registered model ``drnet_lstm`` (``DRNETPredictor``): an
LSTM trained on the poses of a frozen, trained DRNET to predict the next pose from the current one
and the content, h_p^{t+1} = LSTM(h_p^t, h_c); frames are the decoder's drawings of the predicted
poses with the content of the last observed frame. Build it with ``DRNETPredictor.from_drnet``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aelab.functional import bernoulli_log_likelihood, squared_error
from aelab.nn.base import Loss, Model
from aelab.nn.mlp import mlp
from aelab.registry import register
from aelab.train.optim import adam


@dataclass
class DRNETConfig:
    frame_shape: tuple[int, int, int] = (1, 32, 32)
    """Shape of one frame (C, H, W); H = W, a power of two >= 8 (stride-2 convs down to 4x4)."""
    n_frames: int = 10
    """Frames per training clip: the model's input is (B, n_frames, C, H, W)."""
    content_dim: int = 64
    """Dimension of the content vector h_c."""
    pose_dim: int = 8
    """Dimension of the pose vector h_p (small: it should only hold where things are)."""
    channels: int = 32
    """Channels of the first conv layer; each stride-2 layer doubles them (encoders), the decoder mirrors them."""
    sim_weight: float = 1.0
    """Weight of the content similarity term (sum of squares over content_dim, mean over clips)."""
    adv_weight: float = 1.0
    """Weight of the adversarial pose term (cross-entropy of the scene discriminator's output against 1/2).
    Against the summed cross-entropy of 32x32 Moving MNIST frames, 0.1 let the pose take over the
    content and 5 pushed position into the content in our trial runs; 1 sat between."""
    disc_hidden: tuple[int, ...] = (100, 100)
    """Hidden widths of the scene discriminator MLP on [h_p, h_p'] (ReLU between layers)."""
    disc_lr: float = 2e-3
    """Learning rate of the discriminator's Adam optimizer (the encoders' and decoder's comes from ``fit(lr=...)``)."""
    recon_loss: str = "bce"
    """Reconstruction cost per pixel, summed over pixels: "bce" (Bernoulli cross-entropy on the decoder's
    logits, as the MNIST VAEs use) or "squared" (squared error of the sigmoid output, the paper's choice).
    With sigmoid outputs on mostly black frames the squared error's gradient vanishes where the output
    saturates, and short runs stall on black frames; the cross-entropy does not."""

    def __post_init__(self) -> None:
        c, h, w = self.frame_shape
        if h != w or h < 8 or h & (h - 1):
            raise ValueError(f"frame_shape must be (C, S, S) with S a power of two >= 8, got {tuple(self.frame_shape)}")
        if min(c, self.n_frames, self.content_dim, self.pose_dim, self.channels) < 1:
            raise ValueError("frame channels, n_frames, content_dim, pose_dim and channels must all be >= 1")
        if self.n_frames < 2:
            raise ValueError(f"a clip needs at least 2 frames (content and pose come from different frames), got {self.n_frames}")
        if self.recon_loss not in ("bce", "squared"):
            raise ValueError(f"recon_loss must be 'bce' or 'squared', got {self.recon_loss!r}")
        if self.sim_weight < 0 or self.adv_weight < 0 or self.disc_lr <= 0:
            raise ValueError("sim_weight and adv_weight must be >= 0 and disc_lr > 0")


def _n_down(side: int) -> int:
    return int(math.log2(side)) - 2  # stride-2 layers from side down to 4


class FrameEncoder(nn.Module):
    """Stride-2 4x4 convs (channels doubling) down to 4x4, then a linear layer: (N, C, S, S) -> (N, out_dim)."""

    def __init__(self, frame_shape, out_dim: int, channels: int):
        super().__init__()
        c, side, _ = frame_shape
        layers, width = [], c
        for i in range(_n_down(side)):
            layers += [nn.Conv2d(width, channels * 2**i, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            width = channels * 2**i
        self.conv = nn.Sequential(*layers)
        self.head = nn.Linear(width * 16, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.conv(x).flatten(1))


class FrameDecoder(nn.Module):
    """The mirror: a linear layer to 4x4 maps, stride-2 transposed convs: (N, in_dim) -> logits (N, C, S, S)."""

    def __init__(self, in_dim: int, frame_shape, channels: int):
        super().__init__()
        c, side, _ = frame_shape
        n = _n_down(side)
        self.width = channels * 2 ** (n - 1)
        self.head = nn.Sequential(nn.Linear(in_dim, self.width * 16), nn.ReLU())
        layers, width = [], self.width
        for i in reversed(range(n)):
            out = c if i == 0 else channels * 2 ** (i - 1)
            layers.append(nn.ConvTranspose2d(width, out, 4, stride=2, padding=1))
            if i:
                layers.append(nn.ReLU())
            width = out
        self.deconv = nn.Sequential(*layers)

    def forward(self, h: Tensor) -> Tensor:
        return self.deconv(self.head(h).view(h.shape[0], self.width, 4, 4))


@dataclass
class DRNETOutput:
    """What ``DRNET.forward`` returns."""

    recon: Tensor
    """The clip drawn from one content vector and each frame's pose, (B, T, C, H, W) in [0, 1]."""
    recon_logits: Tensor
    """The decoder's logits of ``recon`` (recon = sigmoid(recon_logits)), (B, T, C, H, W)."""
    x: Tensor
    """The input clip, (B, T, C, H, W)."""
    content: Tensor
    """Content of frame t of each clip (the one the clip is drawn from), (B, content_dim)."""
    content_other: Tensor
    """Content of another random frame of the same clip (for the similarity term), (B, content_dim)."""
    pose: Tensor
    """Pose of every frame, (B, T, pose_dim)."""
    pair_frames: Tensor
    """Two random frame indices per clip (B, 2) whose poses the scene discriminator compares."""
    scene_logits: Tensor
    """Discriminator logits on same-clip pose pairs (B,): the pose encoder wants sigmoid = 1/2."""


@register("drnet")
class DRNET(Model):
    """Content encoder, pose encoder, decoder and scene discriminator (Denton & Birodkar 2017)."""

    Config = DRNETConfig

    def __init__(self, config: DRNETConfig):
        super().__init__(config)
        shape = tuple(config.frame_shape)
        self.content_encoder = FrameEncoder(shape, config.content_dim, config.channels)
        self.pose_encoder = FrameEncoder(shape, config.pose_dim, config.channels)
        self.decoder = FrameDecoder(config.content_dim + config.pose_dim, shape, config.channels)
        self.discriminator = mlp([2 * config.pose_dim, *config.disc_hidden, 1])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.config.n_frames, *self.config.frame_shape)

    def check_frames(self, x: Tensor, what: str = "frames") -> Tensor:
        """(..., C, H, W) float frames of this model's frame_shape; a clear error otherwise."""
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(f"{self.name} expects float {what} (..., {', '.join(map(str, self.config.frame_shape))}) in [0, 1]")
        if x.dim() < 4 or tuple(x.shape[-3:]) != tuple(self.config.frame_shape):
            raise ValueError(f"{self.name} expects {what} of shape (..., {', '.join(map(str, self.config.frame_shape))}), got {tuple(x.shape)}")
        return x

    # -- the three networks, on any leading shape ------------------------------------------------
    def content(self, frames: Tensor) -> Tensor:
        """h_c of frames (..., C, H, W) -> (..., content_dim)."""
        frames = self.check_frames(frames)
        return self.content_encoder(frames.flatten(0, -4)).view(*frames.shape[:-3], -1)

    def pose(self, frames: Tensor) -> Tensor:
        """h_p of frames (..., C, H, W) -> (..., pose_dim)."""
        frames = self.check_frames(frames)
        return self.pose_encoder(frames.flatten(0, -4)).view(*frames.shape[:-3], -1)

    def decode_logits(self, content: Tensor, pose: Tensor) -> Tensor:
        """D(h_c, h_p) as logits: content (..., content_dim) and pose (..., pose_dim), broadcast -> (..., C, H, W)."""
        lead = torch.broadcast_shapes(content.shape[:-1], pose.shape[:-1])
        h = torch.cat([content.expand(*lead, -1), pose.expand(*lead, -1)], dim=-1)
        return self.decoder(h.reshape(-1, h.shape[-1])).view(*lead, *self.config.frame_shape)

    def decode(self, content: Tensor, pose: Tensor) -> Tensor:
        """D(h_c, h_p): content (..., content_dim) and pose (..., pose_dim), broadcast -> frames (..., C, H, W) in [0, 1]."""
        return torch.sigmoid(self.decode_logits(content, pose))

    def scene_logits(self, pose_a: Tensor, pose_b: Tensor) -> Tensor:
        """C(h_p, h_p') as a logit: (N, pose_dim) twice -> (N,); sigmoid = P(same clip)."""
        return self.discriminator(torch.cat([pose_a, pose_b], dim=-1)).squeeze(-1)

    # -- training ---------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> DRNETOutput:
        x = self.check_input(x)
        b, t = x.shape[:2]
        rows = torch.arange(b, device=x.device)
        src = torch.randint(0, t, (b, 2), device=x.device)  # content frame t, and another for the similarity term
        content = self.content(x[rows[:, None], src])  # (B, 2, content_dim)
        pose = self.pose(x)  # (B, T, pose_dim)
        logits = self.decode_logits(content[:, :1], pose)  # (B, T, C, H, W): content of frame t, pose of every frame
        pair = torch.randint(0, t, (b, 2), device=x.device)
        scene = self.scene_logits(pose[rows, pair[:, 0]], pose[rows, pair[:, 1]])
        return DRNETOutput(recon=torch.sigmoid(logits), recon_logits=logits, x=x, content=content[:, 0], content_other=content[:, 1], pose=pose,
                           pair_frames=pair, scene_logits=scene)

    def loss(self, batch, out: DRNETOutput) -> Loss:
        """recon + sim_weight * sim + adv_weight * adv, each a batch mean.

        recon: cross-entropy (or squared error, ``recon_loss``) summed over pixels, averaged over the
        T frames and the clips; sim:
        ||h_c^t - h_c^t'||^2 summed over content dims, mean over clips; adv: binary cross-entropy of
        the discriminator's same-clip output against 1/2 in nats, mean over clips (its minimum is
        log 2, at output 1/2). The discriminator's own loss is not part of it (see ``train_step``).
        """
        b, t = out.x.shape[:2]
        x = out.x.flatten(0, 1)
        if self.config.recon_loss == "bce":
            per_frame = -bernoulli_log_likelihood(x, out.recon_logits.flatten(0, 1).float())
        else:
            per_frame = squared_error(x, out.recon.flatten(0, 1))
        recon = per_frame.view(b, t).mean()
        sim = (out.content - out.content_other).pow(2).sum(-1).mean()
        adv = F.binary_cross_entropy_with_logits(out.scene_logits.float(), torch.full_like(out.scene_logits.float(), 0.5))
        total = recon + self.config.sim_weight * sim + self.config.adv_weight * adv
        return Loss(total, {"recon": recon.detach(), "sim": sim.detach(), "adv": adv.detach()})

    def discriminator_loss(self, pose: Tensor, pair_frames: Tensor) -> tuple[Tensor, Tensor]:
        """Binary cross-entropy of C on same-clip pairs (target 1) and two-clip pairs (target 0): (loss, accuracy).

        pose (B, T, pose_dim) (detach it: this trains C only); pair_frames (B, 2). Same-clip pairs are
        (pose[b, t1], pose[b, t2]); two-clip pairs (pose[b, t1], pose[b + 1 mod B, t2]). Mean over the 2B pairs.
        """
        b = pose.shape[0]
        if b < 2:
            raise ValueError("the scene discriminator needs at least 2 clips per batch (pairs from two different clips)")
        rows = torch.arange(b, device=pose.device)
        first = pose[rows, pair_frames[:, 0]]
        same = pose[rows, pair_frames[:, 1]]
        other = pose[rows.roll(-1), pair_frames[:, 1]]
        logits = self.scene_logits(torch.cat([first, first]), torch.cat([same, other])).float()  # (2B,)
        target = torch.cat([torch.ones(b), torch.zeros(b)]).to(logits.device)
        loss = F.binary_cross_entropy_with_logits(logits, target)
        accuracy = ((logits > 0).float() == target).float().mean()
        return loss, accuracy

    def main_parameters(self) -> list[nn.Parameter]:
        """Encoders and decoder: everything but the discriminator."""
        disc = {id(p) for p in self.discriminator.parameters()}
        return [p for p in self.parameters() if id(p) not in disc]

    def configure_optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        """[Adam over encoders and decoder at ``lr``, Adam over the discriminator at ``disc_lr``]."""
        return [adam(self.main_parameters(), lr=lr, betas=(0.5, 0.999)),
                adam(self.discriminator.parameters(), lr=self.config.disc_lr, betas=(0.5, 0.999))]

    def train_step(self, batch, ctx) -> Loss:
        """Encoders and decoder on the main loss (optimizer 0), then the scene discriminator (optimizer 1).

        Logs ``disc_loss`` and ``disc_acc`` beside recon, sim and adv.
        """
        with ctx.autocast():
            out = ctx.model(*self.forward_args(batch))
            loss = self.loss(batch, out)
        ctx.update(loss.total, optimizer=0)
        with ctx.autocast():
            disc_loss, disc_acc = self.discriminator_loss(out.pose.detach(), out.pair_frames)
        ctx.update(disc_loss, optimizer=1)
        loss.terms.update(disc_loss=disc_loss.detach(), disc_acc=disc_acc)
        return loss

    @torch.no_grad()
    def analogy(self, content_frames: Tensor, pose_frames: Tensor) -> Tensor:
        """Draw every content with every pose: (A, C, H, W) and (P, C, H, W) -> (A, P, C, H, W)."""
        h_c = self.content(content_frames)[:, None]  # (A, 1, content_dim)
        h_p = self.pose(pose_frames)[None]  # (1, P, pose_dim)
        return self.decode(h_c, h_p)


@dataclass
class DRNETPredictorConfig(DRNETConfig):
    lstm_hidden: int = 128
    """Hidden units per LSTM layer."""
    lstm_layers: int = 1
    """Stacked LSTM layers."""
    n_past: int = 5
    """Observed frames: training takes the content from frame n_past - 1, as prediction does from the last observed frame."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lstm_hidden < 1 or self.lstm_layers < 1:
            raise ValueError("lstm_hidden and lstm_layers must be >= 1")
        if not 1 <= self.n_past <= self.n_frames:
            raise ValueError(f"n_past must be in [1, n_frames = {self.n_frames}], got {self.n_past}")


@dataclass
class DRNETPredictorOutput:
    """What ``DRNETPredictor.forward`` returns (teacher forcing: each step sees the true previous pose)."""

    recon: Tensor
    """Frame 0 drawn from its pose, frames 1.. from the predicted poses, (B, T, C, H, W) (no gradient)."""
    x: Tensor
    """The input clip, (B, T, C, H, W)."""
    pose: Tensor
    """Poses of the frozen pose encoder, (B, T, pose_dim): the targets."""
    predicted: Tensor
    """Predicted poses of frames 1..T-1, (B, T - 1, pose_dim)."""


@register("drnet_lstm")
class DRNETPredictor(Model):
    """Video prediction on a frozen DRNET: an LSTM from (pose h_p^t, content h_c) to the next pose h_p^{t+1}."""

    Config = DRNETPredictorConfig

    def __init__(self, config: DRNETPredictorConfig):
        super().__init__(config)
        self.drnet = DRNET(config)
        self.drnet.requires_grad_(False)  # frozen: only the LSTM and its read-out learn
        self.lstm = nn.LSTM(config.pose_dim + config.content_dim, config.lstm_hidden, config.lstm_layers, batch_first=True)
        self.readout = nn.Linear(config.lstm_hidden, config.pose_dim)

    @classmethod
    def from_drnet(cls, drnet: DRNET, **config) -> DRNETPredictor:
        """A predictor with ``drnet``'s sizes and (copied, frozen) weights; ``config`` sets the LSTM fields
        (and may set ``n_frames``, the clip length the LSTM trains on)."""
        model = cls(cls.Config(**(dataclasses.asdict(drnet.config) | config)))
        model.drnet.load_state_dict(drnet.state_dict())
        return model.to(next(drnet.parameters()).device)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.config.n_frames, *self.config.frame_shape)

    def configure_optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        """One Adam over the LSTM and its read-out (the DRNET stays frozen)."""
        return [adam([*self.lstm.parameters(), *self.readout.parameters()], lr=lr)]

    def step_poses(self, pose: Tensor, content: Tensor, state=None) -> tuple[Tensor, tuple]:
        """Next poses from poses (B, S, pose_dim) and one content (B, content_dim): ((B, S, pose_dim), LSTM state)."""
        h = torch.cat([pose, content[:, None].expand(-1, pose.shape[1], -1)], dim=-1)
        y, state = self.lstm(h, state)
        return self.readout(y), state

    def forward(self, x: Tensor) -> DRNETPredictorOutput:
        x = self.check_input(x)
        with torch.no_grad():
            pose = self.drnet.pose(x)  # (B, T, pose_dim)
            content = self.drnet.content(x[:, self.config.n_past - 1])  # (B, content_dim)
        predicted, _ = self.step_poses(pose[:, :-1], content)  # (B, T - 1, pose_dim)
        with torch.no_grad():
            recon = self.drnet.decode(content[:, None], torch.cat([pose[:, :1], predicted], dim=1))
        return DRNETPredictorOutput(recon=recon, x=x, pose=pose, predicted=predicted)

    def loss(self, batch, out: DRNETPredictorOutput) -> Loss:
        """||predicted h_p^{t+1} - h_p^{t+1}||^2 summed over pose dims, mean over the T - 1 steps and the clips.

        terms: ``pose`` (that loss) and ``frames`` (squared error of the drawn frames against the clip,
        summed over pixels, mean over frames and clips; no gradient).
        """
        pose_loss = (out.predicted - out.pose[:, 1:]).pow(2).sum(-1).mean()
        b, t = out.x.shape[:2]
        frames = squared_error(out.x.flatten(0, 1), out.recon.flatten(0, 1)).view(b, t).mean()
        return Loss(pose_loss, {"pose": pose_loss.detach(), "frames": frames.detach()})

    @torch.no_grad()
    def predict(self, context: Tensor, n_future: int) -> Tensor:
        """Observe ``context`` (B, n_ctx, C, H, W), predict the next ``n_future`` frames: (B, n_future, C, H, W).

        The LSTM reads the observed poses, then feeds its own predictions back; every frame is drawn
        with the content of the last observed frame.
        """
        context = self.drnet.check_frames(context, "context clips")
        if context.dim() != 5 or context.shape[1] < 1 or n_future < 1:
            raise ValueError(f"predict takes context (B, n_ctx >= 1, C, H, W) and n_future >= 1, got {tuple(context.shape)}, {n_future}")
        pose = self.drnet.pose(context)
        content = self.drnet.content(context[:, -1])
        nxt, state = self.step_poses(pose, content)
        poses = [nxt[:, -1:]]
        for _ in range(n_future - 1):
            nxt, state = self.step_poses(poses[-1], content, state)
            poses.append(nxt)
        return self.drnet.decode(content[:, None], torch.cat(poses, dim=1))
