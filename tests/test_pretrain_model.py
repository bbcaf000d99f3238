"""Native GPT: local-window masking, GPT-Neo window semantics, exact HF export (logits + greedy decoding)."""
from __future__ import annotations

import pytest
import torch

from pretrain.export import to_hf
from pretrain.model import GPT, CausalSelfAttention, GPTConfig, banded_causal_mask
from tests.pretrain_helpers import randomized

W = 6


def _cfg(**kw) -> GPTConfig:
    base = {"vocab_size": 320, "block_size": 96, "n_layer": 4, "n_head": 2, "n_embd": 64, "window": W}
    return GPTConfig(**{**base, **kw})


def test_mask_matches_gpt_neo_definition():
    # transformers' GPTNeoSelfAttention: bias = tril(ones) xor tril(tril(ones), -window_size)
    t = 20
    tril = torch.tril(torch.ones(t, t, dtype=torch.bool))
    neo = torch.bitwise_xor(tril, torch.tril(tril, -W))
    assert torch.equal(banded_causal_mask(t, W), neo)
    assert banded_causal_mask(t, W).sum(1).max() == W  # W keys including itself


def test_local_layer_ignores_keys_beyond_window():
    torch.manual_seed(0)
    cfg = _cfg(attention="sparse")
    local, dense = CausalSelfAttention(cfg, local=True), CausalSelfAttention(cfg, local=False)
    dense.load_state_dict(local.state_dict())
    x = torch.randn(1, 40, cfg.n_embd)
    x2 = x.clone()
    x2[0, 3] += 5.0  # perturb the token at position 3
    with torch.no_grad():
        yl, yl2 = local(x), local(x2)
        yd, yd2 = dense(x), dense(x2)
    moved_l = (yl - yl2).abs().amax(-1)[0]
    moved_d = (yd - yd2).abs().amax(-1)[0]
    # positions 3 .. 3+W-1 see it, later ones on the local layer provably do not
    assert (moved_l[3:3 + W] > 1e-4).all()
    assert moved_l[3 + W:].max() == 0
    assert (moved_d[3:] > 1e-4).all()  # the dense layer sees it everywhere after it
    assert moved_l[:3].max() == 0 and moved_d[:3].max() == 0  # causal


def test_receptive_field_of_whole_model():
    x = torch.randint(0, 320, (1, 60))
    x2 = x.clone()
    x2[0, 0] = (x[0, 0] + 1) % 320
    all_local = randomized(_cfg(attention="sparse", local_layers=[0, 1, 2, 3]))
    gpt3 = randomized(_cfg(attention="sparse"))  # alternating dense / local
    with torch.no_grad():
        d_local = (all_local(x)[0] - all_local(x2)[0]).abs().amax(-1)[0]
        d_gpt3 = (gpt3(x)[0] - gpt3(x2)[0]).abs().amax(-1)[0]
    reach = 4 * (W - 1)  # each local layer extends the receptive field by W-1 positions
    assert d_local[reach + 1:].max() == 0 and d_local[reach] > 0
    assert (d_gpt3 > 0).all()  # the dense layers carry it to the end


@pytest.mark.parametrize(("attention", "gelu"), [("dense", "none"), ("sparse", "none"), ("dense", "tanh")])
def test_export_logits_and_greedy_generation(attention, gelu, tmp_path):
    from transformers import AutoModelForCausalLM

    native = randomized(_cfg(attention=attention, gelu_approximate=gelu))
    hf = to_hf(native, {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 1})
    hf.save_pretrained(str(tmp_path))
    # reload through the Auto class: no custom code; eager keeps GPT-Neo's local window
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path), attn_implementation="eager").eval()
    assert type(hf).__name__ == ("GPT2LMHeadModel" if attention == "dense" else "GPTNeoForCausalLM")
    x = torch.randint(0, 320, (3, 80))
    with torch.no_grad():
        diff = (native(x)[0] - hf(x).logits).abs().max().item()
    assert diff < 1e-4
    prompt = x[:1, :8]
    n_new = W + 40  # 40 tokens past the window
    ours = native.generate(prompt, n_new, temperature=0.0)
    theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n_new,
                         do_sample=False, pad_token_id=1, eos_token_id=None)
    assert torch.equal(ours, theirs)


def test_sparse_with_qkv_bias_refuses_export():
    with pytest.raises(ValueError, match="qkv_bias"):
        to_hf(GPT(_cfg(attention="sparse", qkv_bias=True)))


def test_bad_config():
    with pytest.raises(ValueError):
        GPTConfig(n_embd=65, n_head=2)
    with pytest.raises(ValueError):
        GPTConfig(attention="banded")


def _lm(model, native: bool):
    """An ``LM`` around an in-memory model (no checkpoint on disk); only generate() is used."""
    from types import SimpleNamespace

    from pretrain.sample import LM

    lm = LM.__new__(LM)
    lm.model, lm.native, lm.device = model, native, "cpu"
    lm.tokenizer = SimpleNamespace(eos_token_id=None, pad_token_id=1)
    cfg = model.config
    lm.block_size = cfg.block_size if native else (getattr(cfg, "n_positions", None) or cfg.max_position_embeddings)
    return lm


@pytest.mark.parametrize("attention", ["dense", "sparse"])
def test_generate_long_prompt_returns_exactly_the_new_tokens(attention, tmp_path):
    """A prompt that does not leave room for the continuation is cropped from the left; native == HF."""
    from transformers import AutoModelForCausalLM

    native = randomized(_cfg(attention=attention, block_size=16))
    to_hf(native, {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 1}).save_pretrained(str(tmp_path))
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path), attn_implementation="eager").eval()
    a, b = _lm(native, True), _lm(hf, False)
    torch.manual_seed(1)
    for t in (3, 10, 14, 40):  # fits, exactly fits, too long (the reviewer's repro), much too long
        prompt = torch.randint(2, 320, (1, t))
        out_a = a.generate(prompt, 6, temperature=0.0, stop_at_eos=False)
        out_b = b.generate(prompt, 6, temperature=0.0, stop_at_eos=False)
        assert out_a.shape == (1, 6), (t, out_a.shape)
        assert torch.equal(out_a, out_b), t
        # the continuation is that of the prompt's last block_size - 6 tokens
        ref = native.generate(prompt[:, -10:], 6, temperature=0.0)[:, -6:]
        assert torch.equal(out_a, ref), t
    # HF would index past its position table; both paths refuse with a clear error instead
    for lm in (a, b):
        for n in (16, 20):
            with pytest.raises(ValueError, match="block_size"):
                lm.generate(torch.randint(2, 320, (1, 4)), n)


def test_top_k_zero_means_off():
    native = randomized(_cfg(block_size=16))
    lm = _lm(native, True)
    prompt = torch.randint(2, 320, (1, 4))
    off = lm.generate(prompt, 5, temperature=1.0, top_k=0, seed=3)
    none = lm.generate(prompt, 5, temperature=1.0, top_k=None, seed=3)
    assert off.shape == (1, 5) and torch.equal(off, none)
    g = torch.Generator().manual_seed(3)
    assert torch.equal(native.generate(prompt, 5, temperature=1.0, top_k=0, generator=g)[:, 4:], off)
