"""The Sparse Transformer's fixed pattern: mask, what one layer can and cannot see, reach across layers,
native training / resume / sampling / evaluation, the refused export and the attention comparison."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pretrain.export import export, to_hf
from pretrain.export import main as export_main
from pretrain.model import GPT, CausalSelfAttention, GPTConfig, fixed_causal_mask
from tests.pretrain_helpers import randomized

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
L, C = 8, 2  # block and summary positions used by the layer tests
SMALL = ["--preset", "micro", "--threads", "1", "--no-progress"]


def _cfg(**kw) -> GPTConfig:
    base = {"vocab_size": 320, "block_size": 64, "n_layer": 2, "n_head": 2, "n_embd": 64,
            "attention": "fixed", "fixed_block": L, "fixed_summary": C}
    return GPTConfig(**{**base, **kw})


def test_mask_picture():
    # blocks of 4, one summary position (the last of each block); x = may attend
    want = ["x...........", "xx..........", "xxx.........", "xxxx........",
            "...xx.......", "...xxx......", "...xxxx.....", "...xxxxx....",
            "...x...xx...", "...x...xxx..", "...x...xxxx.", "...x...xxxxx"]
    got = ["".join("x" if v else "." for v in row) for row in fixed_causal_mask(12, 4, 1).tolist()]
    assert got == want
    m = fixed_causal_mask(40, L, C)
    assert m.sum(1)[L * 4 + L - 1] == L + 4 * C  # last query of block 4: its block + 4 earlier summaries
    assert torch.equal(fixed_causal_mask(L, L, C), torch.tril(torch.ones(L, L, dtype=torch.bool)))


def _moved(layer: CausalSelfAttention, x: torch.Tensor, pos: int) -> torch.Tensor:
    """Per query position: how far the layer's output moves when the input at ``pos`` is perturbed."""
    x2 = x.clone()
    x2[0, pos] += 5.0
    with torch.no_grad():
        return (layer(x) - layer(x2)).abs().amax(-1)[0]


def test_fixed_layer_sees_only_its_block_and_earlier_summaries():
    torch.manual_seed(0)
    cfg = _cfg()
    layer = CausalSelfAttention(cfg, local=True)
    x = torch.randn(1, 40, cfg.n_embd)
    # a word in block 0 that is not a summary position: only the rest of block 0 sees it
    plain = _moved(layer, x, 3)
    assert plain[:3].max() == 0  # causal
    assert (plain[3:L] > 1e-4).all()
    assert plain[L:].max() == 0  # every later block provably ignores it
    # a summary position of block 0 (positions L-C .. L-1): every later token reads it
    summary = _moved(layer, x, L - C)
    assert summary[:L - C].max() == 0
    assert (summary[L - C:] > 1e-4).all()
    # in block 2, word 16+3 is ignored by block 3 but summary 16+L-1 is not
    assert _moved(layer, x, 2 * L + 3)[3 * L:].max() == 0
    assert (_moved(layer, x, 3 * L - 1)[3 * L:] > 1e-4).all()
    # the same weights as a dense layer see the plain word everywhere after it
    dense = CausalSelfAttention(_cfg(attention="dense"), local=False)
    dense.load_state_dict(layer.state_dict())
    assert (_moved(dense, x, 3)[3:] > 1e-4).all()


def _reach(model: GPT, t: int = 60) -> torch.Tensor:
    """Per position: how far the logits move when the first token changes."""
    x = torch.randint(0, 320, (1, t), generator=torch.Generator().manual_seed(1))
    x2 = x.clone()
    x2[0, 0] = (x[0, 0] + 1) % 320
    with torch.no_grad():
        return (model(x)[0] - model(x2)[0]).abs().amax(-1)[0]


def test_stacked_fixed_layers_carry_the_first_token_to_the_last():
    one = _reach(randomized(_cfg(n_layer=1, local_layers=[0])))
    assert (one[:L] > 0).all() and one[L:].max() == 0  # one layer: token 0 stays in its block
    two = _reach(randomized(_cfg(n_layer=2, local_layers=[0, 1])))
    assert (two > 0).all()  # block 0's summaries gather it, then every later token reads them
    assert (_reach(randomized(_cfg(n_layer=2))) > 0).all()  # default: dense layer 0, fixed layer 1


def test_config_and_flops():
    with pytest.raises(ValueError, match="fixed_summary"):
        GPTConfig(attention="fixed", fixed_block=8, fixed_summary=9)
    with pytest.raises(ValueError, match="fixed_summary"):
        GPTConfig(attention="fixed", fixed_summary=0)
    fixed, dense = _cfg(), _cfg(attention="dense")
    assert [fixed.is_local(i) for i in range(2)] == [False, True]
    assert GPT(fixed).num_params() == GPT(dense).num_params()  # same weights, only the mask differs
    # layer 1 sees at most its block of 8 + 7 earlier summaries of 2 = 22 of 64 keys
    diff = GPT(dense).flops_per_token() - GPT(fixed).flops_per_token()
    assert diff == 12 * 64 * (64 - (L + C * 7))


def test_export_refuses_fixed_with_the_exportable_patterns():
    with pytest.raises(ValueError, match=r"dense \(-> GPT2LMHeadModel\).*sparse \(-> GPTNeoForCausalLM\)"):
        to_hf(GPT(_cfg()))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    from pretrain.corpus import iter_files, pydoc_topics
    from pretrain.prepare import prepare

    d = tmp_path_factory.mktemp("shards")
    texts = iter_files([str(SHAKESPEARE)], chunk_chars=2000) if SHAKESPEARE.is_file() else pydoc_topics()
    prepare(d, list(texts)[:120], vocab_size=384, val_fraction=0.1)  # ~240k chars: seconds
    return d


def _losses(run: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


def test_fixed_trains_resumes_samples_evaluates_and_does_not_export(data_dir, tmp_path):
    from pretrain.evaluate import validation_loss
    from pretrain.sample import LM
    from pretrain.train import train

    common = ["--data", str(data_dir), *SMALL, "--attention", "fixed", "--max-steps", "16", "--warmup-steps", "2",
              "--log-interval", "2", "--eval-interval", "8", "--dropout", "0.1"]
    straight = train([*common, "--out", str(tmp_path / "a")])
    assert train([*common, "--out", str(tmp_path / "b"), "--stop-at-step", "8"])["step"] == 8
    resumed = train(["--out", str(tmp_path / "b"), "--resume", "--no-progress"])
    assert straight["step"] == resumed["step"] == 16
    a = torch.load(tmp_path / "a" / "ckpt.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "ckpt.pt", weights_only=False)
    assert a["model_config"]["attention"] == "fixed" and a["model_config"]["fixed_block"] == 16
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    losses = _losses(tmp_path / "a")
    assert losses == _losses(tmp_path / "b")
    assert losses[-1] < losses[0] - 0.5, losses  # it learns (from ~ln(384) = 5.95)
    # the micro preset's 64-token context spans 4 blocks of 16: layer 1 really runs the sparse mask
    layer = straight["model"].h[1].attn
    assert layer.local and layer.attention == "fixed"
    assert layer.span == 16 and straight["model"].config.block_size == 64

    lm = LM(tmp_path / "a")  # the run folder, natively
    text = lm.complete("ROMEO:", 12, temperature=0.0)
    assert lm.tokenizer(text, add_special_tokens=False)["input_ids"]  # something was generated
    ev = validation_loss(lm, str(data_dir), max_tokens=5_000)
    assert 0 < ev["val_loss"] < losses[0]

    out = tmp_path / "hf"
    with pytest.raises(ValueError, match="GPT2LMHeadModel"):
        export(tmp_path / "a", out)
    with pytest.raises(SystemExit, match="only dense .*GPT2LMHeadModel.* and sparse .*GPTNeoForCausalLM"):
        export_main(["--ckpt", str(tmp_path / "a"), "--out", str(out), "--register", "never"])
    assert not out.exists()  # nothing half-written


def test_resume_of_a_checkpoint_from_before_the_fixed_keys(data_dir, tmp_path):
    from pretrain.train import train

    run = tmp_path / "old"
    train(["--data", str(data_dir), *SMALL, "--max-steps", "3", "--stop-at-step", "2", "--out", str(run)])
    ck = torch.load(run / "ckpt.pt", weights_only=False)
    for k in ("fixed_block", "fixed_summary"):
        del ck["train_config"][k], ck["model_config"][k]
    torch.save(ck, run / "ckpt.pt")
    assert train(["--out", str(run), "--resume", "--no-progress"])["step"] == 3


def test_compare_attention_table(data_dir, tmp_path, capsys):
    from pretrain.evaluate import main

    main(["--compare", "dense", "sparse", "fixed", "--data", str(data_dir), "--out", str(tmp_path), "--json",
          "--max-tokens", "3000", *SMALL, "--max-steps", "2", "--eval-interval", "2"])  # train flags pass through
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["attention"] for r in rows] == ["dense", "sparse", "fixed"]
    assert all(r["steps"] == 2 and r["val_tokens"] == rows[0]["val_tokens"] > 0 for r in rows)
    # micro: block 64; banded layer 16 keys, fixed layer 16 + 3 summaries of 2 = 22
    f = {r["attention"]: r["flops_per_token"] for r in rows}
    assert f["sparse"] < f["fixed"] < f["dense"]
    for r in rows:
        cfg = torch.load(tmp_path / r["attention"] / "ckpt.pt", weights_only=False)["model_config"]
        assert cfg["attention"] == r["attention"]
    with pytest.raises(SystemExit):
        main(["--model", str(tmp_path / "dense"), "--max-steps", "2"])  # train flags only with --compare
