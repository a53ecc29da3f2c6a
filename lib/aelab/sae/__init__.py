"""Sparse autoencoders and the toy model of superposition, one model per file.

Registry names: toy_superposition, sae_relu, sae_topk, sae_batch_topk, sae_jumprelu, sae_gated,
sae_matryoshka, ksparse_ae. The shared SAE plumbing lives in ``aelab.sae.base``.
"""
