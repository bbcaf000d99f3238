"""PPO (rlhf/ppo_trainer.py, rlhf.train_ppo): the maths against hand-computed numbers, learning on a verifiable
reward, exact resume after SIGKILL, bad input, and the registry loop (SFT -> RM -> PPO -> generate)."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests import rlhf_helpers as H

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ the maths

def _close(t: torch.Tensor, expected: list) -> bool:
    return torch.allclose(t.float(), torch.tensor(expected), atol=1e-6)


def test_gae_against_hand_computation():
    from rlhf.ppo_trainer import gae

    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.4, 0.2]])
    adv, ret = gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=0.95)
    # t=2: 1 - 0.2 = 0.8; t=1: (0 + 0.2 - 0.4) + 0.95 * 0.8 = 0.56; t=0: (0.4 - 0.5) + 0.95 * 0.56 = 0.432
    assert adv.tolist()[0] == pytest.approx([0.432, 0.56, 0.8])
    assert ret.tolist()[0] == pytest.approx([0.932, 0.96, 1.0])
    # gamma < 1 discounts the next value too: t=1: 0 + 0.5*0.2 - 0.4 + 0.5*0.95*0.8 = 0.08
    adv, _ = gae(rewards, values, torch.ones(1, 3), gamma=0.5, lam=0.95)
    assert adv[0, 1].item() == pytest.approx(0.08)


def test_gae_ignores_post_eos_positions():
    from rlhf.ppo_trainer import gae

    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    a1, r1 = gae(torch.tensor([[0.0, 1.0, 0.0, 0.0]]), torch.tensor([[0.3, 0.6, 0.0, 0.0]]), mask)
    # garbage after EOS (values and rewards) changes nothing before it, and is zero itself
    a2, r2 = gae(torch.tensor([[0.0, 1.0, 5.0, -3.0]]), torch.tensor([[0.3, 0.6, 9.0, 7.0]]), mask)
    assert torch.equal(a1, a2) and torch.equal(r1, r2)
    assert a1[0, 2:].abs().sum() == 0
    assert a1[0].tolist()[:2] == pytest.approx([0.6 - 0.3 + 0.95 * 0.4, 0.4])


def test_kl_penalty_on_every_token_and_score_on_the_last_only():
    from rlhf.ppo_trainer import rewards_with_kl

    lp = torch.tensor([[-1.0, -1.0, -1.0, 0.0], [-2.0, -2.0, 0.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5, 0.0], [-1.0, -2.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    rewards, kl, non_score = rewards_with_kl(torch.tensor([2.0, -1.0]), lp, ref, mask, kl_coef=0.1)
    assert _close(kl, [[0.5, 0.0, -0.5, 0.0], [-1.0, 0.0, 0.0, 0.0]])
    assert _close(non_score, [[-0.05, 0.0, 0.05, 0.0], [0.1, 0.0, 0.0, 0.0]])
    assert _close(rewards, [[-0.05, 0.0, 2.05, 0.0], [0.1, -1.0, 0.0, 0.0]])
    # k3 is non-negative and zero where the two agree
    _, k3, _ = rewards_with_kl(torch.zeros(2), lp, ref, mask, 0.1, estimator="k3")
    assert (k3 >= 0).all() and k3[0, 1] == 0 and k3[0, 0].item() == pytest.approx(math.exp(-0.5) - 1 + 0.5)


def test_clipped_policy_loss_against_hand_computation():
    from rlhf.ppo_trainer import policy_loss

    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 1.5, 1.1]]))
    adv = torch.tensor([[1.0, -1.0, 1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the third token is padding: it must not count
    loss, stats = policy_loss(new, old, adv, mask, cliprange=0.2)
    # A=+1, r=1.5: max(-1.5, -1.2) = -1.2 (clipped); A=-1, r=1.5: max(1.5, 1.2) = 1.5 (not clipped)
    assert loss.item() == pytest.approx((-1.2 + 1.5) / 2)
    assert stats["clipfrac"].item() == pytest.approx(0.5)
    assert stats["approxkl"].item() == pytest.approx(0.5 * math.log(1.5) ** 2)
    assert stats["ratio"].item() == pytest.approx(1.5)


def test_clipped_value_loss_against_hand_computation():
    from rlhf.ppo_trainer import value_loss

    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, clipfrac = value_loss(torch.tensor([[1.0, 0.1, 50.0]]), torch.zeros(1, 3), torch.tensor([[2.0, 0.0, 0.0]]),
                                mask, cliprange_value=0.2)
    # token 0: (1-2)^2 = 1 vs clipped (0.2-2)^2 = 3.24 -> 3.24; token 1: 0.01 (inside the clip) -> 0.01
    assert loss.item() == pytest.approx(0.5 * (3.24 + 0.01) / 2)
    assert clipfrac.item() == pytest.approx(0.5)


def test_adaptive_kl_controller_moves_beta_toward_target():
    from rlhf.ppo_trainer import AdaptiveKLController

    up = AdaptiveKLController(0.1, target=6.0, horizon=100)
    up.update(12.0, n_steps=10)  # KL twice the target: error clipped at +0.2
    assert up.value == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))
    down = AdaptiveKLController(0.1, target=6.0, horizon=100)
    down.update(5.4, n_steps=10)  # 10% under: error -0.1
    assert down.value == pytest.approx(0.1 * (1 - 0.1 * 10 / 100))
    st = up.state_dict()
    again = AdaptiveKLController(1.0, 6.0, 100)
    again.load_state_dict(st)
    assert again.value == up.value


def test_response_mask_stops_at_the_first_stop_token():
    from rlhf.sampling import response_mask

    ids = torch.tensor([[5, 7, 2, 9, 2], [5, 6, 7, 8, 9], [2, 3, 3, 3, 3]])
    mask, ended = response_mask(ids, [2])
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert ended.tolist() == [True, False, True]


def test_masked_whiten_uses_only_masked_entries():
    from rlhf.ppo_trainer import masked_whiten

    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = masked_whiten(x, mask)
    assert w[0, :3].tolist() == pytest.approx([-1.0, 0.0, 1.0], abs=1e-4) and w[0, 3] == 0


# ------------------------------------------------------------------------------------------ sampling / scoring

def test_sampler_logprobs_match_a_forward_pass_and_batched_greedy_equals_unbatched(tiny):
    """Left padding must not change what the model computes: batched greedy = one prompt at a time, and the
    sampler's per-token log-probs equal the trainer's forward pass (position ids from the mask)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf.sampling import SamplingParams, left_pad, sample, token_logprobs

    tok = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny).eval()
    prompts = [tok(t)["input_ids"] for t in ("the cat", "a quick red fish jumps over the moon", "sun")]
    greedy = SamplingParams(temperature=0, max_new_tokens=6)
    q, m = left_pad(prompts, tok.pad_token_id)
    batched = sample(model, q, m, greedy, [tok.eos_token_id], tok.pad_token_id)
    for i, p in enumerate(prompts):
        qi, mi = left_pad([p], tok.pad_token_id)
        one = sample(model, qi, mi, greedy, [tok.eos_token_id], tok.pad_token_id)
        n = int(one.response_mask.sum())
        assert batched.response_ids[i, :n].tolist() == one.response_ids[0, :n].tolist()

    torch.manual_seed(0)
    s = sample(model, q, m, SamplingParams(temperature=0.7, max_new_tokens=8), [tok.eos_token_id], tok.pad_token_id)
    fwd = token_logprobs(model, s.query_ids, s.query_mask, s.response_ids, s.response_mask, 0.7)
    assert torch.allclose(s.logprobs, fwd, atol=1e-4)
    assert (s.logprobs[s.response_mask == 0] == 0).all()


def test_sampling_settings_are_explicit_not_the_checkpoints(tiny, tmp_path):
    """A checkpoint's generation_config (top_k=1 here) must not leak into sampling, and the stored record
    names top_k."""
    from transformers import AutoModelForCausalLM

    from rlhf.sampling import SamplingParams, generation_config

    model = AutoModelForCausalLM.from_pretrained(tiny)
    model.generation_config.top_k = 1
    model.generation_config.top_p = 0.1
    gc = generation_config(SamplingParams(temperature=1.0), [0], 1)
    assert gc.top_k == 0 and gc.top_p == 1.0 and gc.do_sample
    assert SamplingParams(top_k=5).record()["top_k"] == 5


def test_score_ids_equals_score_including_the_config_offset_fallback(tiny):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhf import reward
    from rlhf.formatting import encode
    from rlhf.sampling import left_pad

    tok = AutoTokenizer.from_pretrained(tiny)
    rm = AutoModelForSequenceClassification.from_pretrained(tiny, num_labels=1).eval()
    rm.config.pad_token_id = tok.pad_token_id
    prompts, comps = ["the cat\n", "a fish\n"], ["sat down", "swims in the river"]
    reward.set_info(rm, reward_offset=0.75)  # the fallback normalisation: raw logits carry the offset
    by_text = reward.score(rm, tok, prompts, comps)
    ids, mask = left_pad([encode(tok, p, c) for p, c in zip(prompts, comps)], tok.pad_token_id)
    by_ids = reward.score_ids(rm, ids, mask)
    assert by_ids.tolist() == pytest.approx(by_text, abs=1e-5)
    raw = rm(input_ids=ids[1:], attention_mask=mask[1:]).logits[0, 0].item()
    assert by_ids[1].item() == pytest.approx(raw - 0.75, abs=1e-5)


# ------------------------------------------------------------------------------------------ learning

GOOD_EVERY = 10  # token ids 0, 10, 20, ...: a tenth of the vocabulary


def _good_fraction(_q, _qm, r_ids, r_mask):
    good = (r_ids % GOOD_EVERY == 0) & r_mask.bool()
    return good.float().sum(1) / r_mask.sum(1).clamp(min=1)


def _trainer(tiny, tmp_path, **kw):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from rlhf.ppo_config import PPOConfig
    from rlhf.ppo_trainer import PPOTrainer

    tok = AutoTokenizer.from_pretrained(tiny)
    torch.manual_seed(0)
    policy, ref = AutoModelForCausalLM.from_pretrained(tiny), AutoModelForCausalLM.from_pretrained(tiny)
    value = AutoModelForSequenceClassification.from_pretrained(tiny, num_labels=1)
    value.config.pad_token_id = tok.pad_token_id
    prompts = [tok(t)["input_ids"] for t in H.corpus(40, seed=1)[:40]]
    ptx, stop_ids = kw.pop("ptx", None), kw.pop("stop_ids", None)
    if kw.get("share_value_backbone"):
        value = None
    defaults = {"output_dir": str(tmp_path / "ppo"), "per_device_train_batch_size": 16, "num_mini_batches": 2,
                "num_ppo_epochs": 4, "max_new_tokens": 8, "learning_rate": 1e-3, "max_steps": 25, "kl_coef": 0.05,
                "use_cpu": True, "report_to": "none", "save_steps": 0, "seed": 1, "target_kl": 6.0}
    args = PPOConfig(**{**defaults, **kw})
    return PPOTrainer(args, policy, ref, _good_fraction, tok, prompts, value_model=value, ptx=ptx, stop_ids=stop_ids)


@pytest.fixture(scope="module")
def learned(tiny, tmp_path_factory):
    tr = _trainer(tiny, tmp_path_factory.mktemp("learn"))
    tr.train()
    return tr.history


def test_dropout_is_off_in_every_model_ppo_trains_or_scores(tiny, tmp_path):
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(tiny).resid_pdrop == 0.0  # the fixture has none: give it some
    tr = _trainer(tiny, tmp_path, max_steps=1)
    for m in (tr.unwrapped.policy, tr.unwrapped.value_model, tr.ref_model):
        m.config.resid_pdrop = 0.1
    from rlhf.ppo_trainer import disable_dropout

    for m in (tr.unwrapped.policy, tr.unwrapped.value_model, tr.ref_model):
        for d in m.modules():
            if isinstance(d, torch.nn.Dropout):
                d.p = 0.1
        disable_dropout(m)
        assert all(d.p == 0 for d in m.modules() if isinstance(d, torch.nn.Dropout)) and m.config.resid_pdrop == 0
    # and the trainer does it itself: a policy loaded with dropout 0.1 is at 0 once PPO holds it
    from transformers import AutoModelForCausalLM

    from rlhf.ppo_trainer import PPOTrainer

    noisy = AutoModelForCausalLM.from_pretrained(tiny, resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1)
    t2 = PPOTrainer(tr.args, noisy, AutoModelForCausalLM.from_pretrained(tiny, resid_pdrop=0.1), _good_fraction,
                    tr.tokenizer, tr.prompts, value_model=None if tr.args.share_value_backbone else
                    tr.unwrapped.value_model)
    assert all(d.p == 0 for d in t2.unwrapped.policy.modules() if isinstance(d, torch.nn.Dropout))
    assert all(d.p == 0 for d in t2.ref_model.modules() if isinstance(d, torch.nn.Dropout))


def test_reward_model_with_its_own_tokenizer_scores_decoded_text(tiny, tmp_path):
    """A reward model of another vocabulary scores (prompt, decoded response) re-encoded with its own
    tokenizer, exactly as reward.score would."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhf import reward
    from rlhf.formatting import format_sft_row
    from rlhf.sampling import left_pad
    from rlhf.train_ppo import RewardScorer, _vocab_key

    other = H.build_tiny_lm(tmp_path / "other", vocab_size=300, texts=H.corpus(100, seed=5))
    tok, rm_tok = AutoTokenizer.from_pretrained(tiny), AutoTokenizer.from_pretrained(other)
    assert _vocab_key(tok) != _vocab_key(rm_tok)
    rm = AutoModelForSequenceClassification.from_pretrained(other, num_labels=1).eval()
    rm.config.pad_token_id = rm_tok.pad_token_id
    prompts = ["say cat", "name a river"]
    q = [tok(p + "\n")["input_ids"] for p in prompts]
    r = [tok("the cat sat")["input_ids"] + [tok.eos_token_id], tok("blue water")["input_ids"]]
    qi, qm = left_pad(q, tok.pad_token_id)
    ri = torch.full((2, 4), tok.pad_token_id)
    rmask = torch.zeros(2, 4, dtype=torch.long)
    for i, x in enumerate(r):
        ri[i, :len(x)], rmask[i, :len(x)] = torch.tensor(x[:4]), 1
    scorer = RewardScorer(rm, rm_tok, tok, {tuple(x): p for x, p in zip(q, prompts)}, chat=False, same_vocab=False)
    got = scorer(qi, qm, ri, rmask).tolist()
    texts = [tok.decode(ri[i][rmask[i].bool()], skip_special_tokens=True) for i in range(2)]
    rows = [format_sft_row({"prompt": p, "completion": t}, False) for p, t in zip(prompts, texts)]
    want = reward.score(rm, rm_tok, [x["prompt"] for x in rows], [x["completion"] for x in rows])
    assert got == pytest.approx(want, abs=1e-5)


def test_ppo_scores_sampled_ids_where_reward_training_read_them(tiny):
    """Our chat template writes EOS and then a newline after an answer; reward training reads the score at that
    newline, so a finished response's ids must be scored with it: equal to reward.score on the same text."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhf import reward
    from rlhf.formatting import generation_input
    from rlhf.sampling import left_pad
    from rlhf.train_ppo import RewardScorer, post_eos_suffix

    tok = AutoTokenizer.from_pretrained(tiny)
    assert tok.chat_template and post_eos_suffix(tok, chat=True)  # the template closes the turn after EOS
    rm = AutoModelForSequenceClassification.from_pretrained(tiny, num_labels=1).eval()
    rm.config.pad_token_id = tok.pad_token_id
    prompts, answers = ["say cat", "name a river"], ["the cat sat", "blue water please"]
    q = [tok(generation_input(tok, p, True), add_special_tokens=False)["input_ids"] for p in prompts]
    r = [tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for a in answers]
    qi, qm = left_pad(q, tok.pad_token_id)
    width = max(len(x) for x in r)
    ri, rmask = torch.full((2, width), tok.pad_token_id), torch.zeros(2, width, dtype=torch.long)
    for i, x in enumerate(r):
        ri[i, :len(x)], rmask[i, :len(x)] = torch.tensor(x), 1
    got = RewardScorer(rm, tok, tok, {}, chat=True, same_vocab=True, policy_chat=True)(qi, qm, ri, rmask)
    want = reward.score(rm, tok, [[{"role": "user", "content": p}] for p in prompts],
                        [[{"role": "assistant", "content": a}] for a in answers])
    assert got.tolist() == pytest.approx(want, abs=1e-5)


def test_reward_model_with_a_shorter_context_scores_the_end_of_the_sequence(tiny, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhf import reward
    from rlhf.sampling import left_pad
    from rlhf.train_ppo import RewardScorer

    short = H.build_tiny_lm(tmp_path / "short", n_positions=16)  # same tokenizer, 16 positions
    tok = AutoTokenizer.from_pretrained(tiny)
    rm = AutoModelForSequenceClassification.from_pretrained(short, num_labels=1).eval()
    rm.config.pad_token_id = tok.pad_token_id
    q = [tok("the cat sat on the mat and the dog sat on the log by the river")["input_ids"], tok("sun")["input_ids"]]
    r = [tok(" happy bird")["input_ids"] + [tok.eos_token_id], tok(" moon")["input_ids"] + [tok.eos_token_id]]
    qi, qm = left_pad(q, tok.pad_token_id)
    width = max(len(x) for x in r)
    ri, rmask = torch.full((2, width), tok.pad_token_id), torch.zeros(2, width, dtype=torch.long)
    for i, x in enumerate(r):
        ri[i, :len(x)], rmask[i, :len(x)] = torch.tensor(x), 1
    assert len(q[0]) + len(r[0]) > 16
    got = RewardScorer(rm, tok, tok, {}, chat=False, same_vocab=True)(qi, qm, ri, rmask)
    ends = [(a + b)[-16:] for a, b in zip(q, r)]
    ids, mask = left_pad(ends, tok.pad_token_id)
    assert got.tolist() == pytest.approx(reward.score_ids(rm, ids, mask).tolist(), abs=1e-5)


def test_ppo_raises_a_verifiable_reward_with_kl_under_target(learned):
    scores = [h["objective/scores"] for h in learned]
    first, last = sum(scores[:5]) / 5, sum(scores[-5:]) / 5
    assert first < 0.16  # the random policy: about a tenth of tokens are good
    assert last > first + 0.1 and last > 2 * first, scores
    assert all(h["objective/kl"] < 6.0 for h in learned), [h["objective/kl"] for h in learned]
    assert learned[-1]["objective/kl"] > 0.2  # it did move away from the reference to get there
    for key in ("objective/rlhf_reward", "objective/non_score_reward", "objective/entropy", "policy/approxkl",
                "policy/clipfrac", "loss/policy", "loss/value", "val/ratio", "val/clipfrac", "time/rollout",
                "time/score", "time/learn"):
        assert all(math.isfinite(h[key]) for h in learned), key


def test_a_huge_kl_coefficient_keeps_the_policy_at_the_reference(tiny, tmp_path, learned):
    tr = _trainer(tiny, tmp_path, kl_coef=20.0, max_steps=10)
    tr.train()
    kl = [h["objective/kl"] for h in tr.history]
    scores = [h["objective/scores"] for h in tr.history]
    # the penalty pulls the policy back each time it drifts: KL stays near 0 and the score does not climb
    assert sum(abs(x) for x in kl[-5:]) / 5 < 0.3, kl
    assert sum(scores[-5:]) / 5 < sum(scores[:5]) / 5 + 0.05, scores
    normal = [h["objective/kl"] for h in learned[-5:]]
    assert sum(normal) / 5 > 3 * sum(abs(x) for x in kl[-5:]) / 5, (normal, kl)


def test_ptx_loss_is_computed_and_logged(tiny, tmp_path):
    import numpy as np

    from rlhf.ppo_trainer import PtxData

    ptx = PtxData(np.arange(2000) % 300, block_size=16, seed=0)
    tr = _trainer(tiny, tmp_path, ptx=ptx, ptx_coef=0.5, max_steps=2, num_ppo_epochs=1)
    tr.train()
    assert all(math.isfinite(h["loss/ptx"]) and h["loss/ptx"] > 0 for h in tr.history)
    no_ptx = _trainer(tiny, tmp_path, max_steps=1, num_ppo_epochs=1)
    no_ptx.train()
    assert "loss/ptx" not in no_ptx.history[0]


def test_shared_value_backbone_missing_eos_penalty_and_tensorboard(tiny, tmp_path):
    never = [10 ** 6]  # a stop id that is never sampled: every response is cut at max_new_tokens
    tr = _trainer(tiny, tmp_path, share_value_backbone=True, missing_eos_penalty=1.5, stop_ids=never, max_steps=2,
                  num_ppo_epochs=1, report_to="tensorboard")
    before = tr.unwrapped.value_head.weight.detach().clone()
    tr.train()
    assert tr.unwrapped.value_model is None and not torch.equal(before, tr.unwrapped.value_head.weight)
    for h in tr.history:
        assert h["val/ended_with_eos"] == 0 and h["val/response_length"] == 8
        assert h["objective/scores"] == pytest.approx(h["objective/raw_scores"] - 1.5)
    assert list((tmp_path / "ppo").rglob("events.out.tfevents.*")), "no TensorBoard event file"


def test_bf16_autocast_path_runs_on_cpu(tiny, tmp_path):
    """The CUDA default (bf16 mixed precision) exercised through CPU autocast: finite losses, float32 weights."""
    tr = _trainer(tiny, tmp_path, bf16=True, max_steps=2, num_ppo_epochs=1, per_device_train_batch_size=8,
                  gradient_accumulation_steps=2)  # same 32-prompt rollout, two micro-batches per optimizer step
    tr.train()
    assert tr.accelerator.mixed_precision == "bf16" and tr.history[-1]["episode"] == 64
    assert all(math.isfinite(h["loss/policy"]) and math.isfinite(h["loss/value"]) for h in tr.history)
    assert next(tr.unwrapped.policy.parameters()).dtype == torch.float32


def test_adaptive_kl_lowers_beta_when_kl_is_under_target(tiny, tmp_path):
    tr = _trainer(tiny, tmp_path, adaptive_kl=True, target_kl=50.0, kl_horizon=100, max_steps=3, num_ppo_epochs=1)
    tr.train()
    betas = [h["objective/kl_coef"] for h in tr.history]
    assert betas[0] == pytest.approx(0.05) and tr.kl_ctl.value < betas[0]


# ------------------------------------------------------------------------------------------ the job

def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "INSTRUCTLOOP_HOME": str(home),
            "INSTRUCTLOOP_NO_PROGRESS": "1"}


@pytest.fixture(scope="module")
def loop(tiny, tmp_path_factory):
    """A project with demonstrations and polite preferences, an SFT model and a reward model trained on it."""
    import pytest as _pytest

    from db.migrate import create_schema
    from db.services import registry
    from db.session import session_scope
    from rlhf import train_reward, train_sft

    d = tmp_path_factory.mktemp("loop")
    url = f"sqlite:///{d / 'db.sqlite3'}"
    create_schema(url)
    mp = _pytest.MonkeyPatch()
    mp.setenv("INSTRUCTLOOP_HOME", str(d / "runs"))
    H.make_project(url, "pp")
    H.add_preferences(url, "pp", H.polite_pairs(120, seed=1))
    H.add_demonstrations(url, "pp", [(f"ask {i}", "please " + w) for i, w in enumerate(H.WORDS[:20])])
    with session_scope(url) as s:
        registry.register_model_version(s, "base-tiny", "base", str(tiny))
    common = ["--database_url", url, "--disable_tqdm", "true", "--save_strategy", "no", "--seed", "0"]
    train_sft.main(["--model", "base-tiny", "--project", "pp", "--name", "sft-1", "--max_steps", "60",
                    "--learning_rate", "3e-3", *common])
    rm = train_reward.main(["--model", "base-tiny", "--project", "pp", "--name", "rm-1", "--max_steps", "40",
                            "--learning_rate", "1e-3", "--per_device_train_batch_size", "16", *common])
    assert rm["metrics"]["eval_accuracy"] >= 0.9
    yield {"url": url, "home": d / "runs", "dir": d}
    mp.undo()


PPO_ARGS = ["--per_device_train_batch_size", "8", "--num_mini_batches", "2", "--max_new_tokens", "12",
            "--learning_rate", "3e-4", "--kl_coef", "0.05", "--missing_eos_penalty", "1.0", "--seed", "0"]


def test_ppo_job_registers_a_policy_that_beats_sft_and_feeds_generate(loop, monkeypatch, capsys):
    from db.cli import main as db_main
    from db.services import registry
    from db.session import session_scope
    from rlhf import evaluate, generate, train_ppo

    monkeypatch.setenv("INSTRUCTLOOP_HOME", str(loop["home"]))
    url = loop["url"]
    out = train_ppo.main(["--model", "sft-1", "--reward_model", "rm-1", "--project", "pp", "--name", "ppo-1",
                          "--database_url", url, "--max_steps", "16", "--save_steps", "8", *PPO_ARGS])
    m = out["metrics"]
    assert m["eval/score"] > m["eval/reference_score"] and m["eval/win_rate"] > 0.5, m
    assert m["eval/kl_under_target"] and 0 < m["eval/kl"] < 6.0
    run = Path(out["run_dir"])
    for f in ("model.safetensors", "tokenizer.json", "metrics.jsonl", "job_config.yaml", "value/config.json"):
        assert (run / f).is_file(), f
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if not r.get("final")] == list(range(1, 17))
    with session_scope(url) as s:
        mv = registry.resolve(s, "ppo-1")
        assert mv.kind == "policy" and registry.resolve(s, mv.parent_id).name == "sft-1"
        assert mv.config["reference"]["name"] == "sft-1" and mv.config["reward_model"]["name"] == "rm-1"
        assert mv.config["value_init"]["name"] == "rm-1"
        held = set(mv.label_snapshot["held_out_prompt_ids"])
        trained = set(mv.label_snapshot["ids"]["prompts"])
        assert trained and held and not trained & held and mv.metrics["eval/win_rate"] == m["eval/win_rate"]

    # the policy loads as a plain HF model
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(run)

    db_main(["--url", url, "stats"])
    assert "ppo-1" in capsys.readouterr().out

    res = evaluate.main(["policy", "--model", "ppo-1", "--reference", "sft-1", "--reward", "rm-1", "--project", "pp",
                         "--database_url", url, "--max_new_tokens", "12"])
    assert res["prompts"] == len(held) and set(res) >= {"score", "reference_score", "win_rate", "kl", "length"}

    # the prompts as a file (python -m db export prompts) with an answer each: evaluate reads them from the file.
    # Whether accuracy moves is asserted by tests/test_loop_e2e.py (SFT above base on verifiable tasks), and its
    # rule (the first line is the answer) by tests/test_simulate.py.
    f = loop["dir"] / "prompts.jsonl"
    db_main(["--url", url, "export", "prompts", "--project", "pp", "-o", str(f)])
    exported = [json.loads(x) for x in f.read_text().splitlines()]
    assert len(exported) == m["train_prompts"] + m["held_out_prompts"] and {"prompt", "prompt_id"} <= set(exported[0])
    H.write_jsonl(f, [{**r, "answer": "please"} for r in exported])
    res = evaluate.main(["policy", "--model", "ppo-1", "--reference", "sft-1", "--reward", "rm-1", "--dataset",
                         str(f), "--split", "all", "--database_url", url, "--max_new_tokens", "12"])
    assert res["prompts"] == len(exported) and 0 <= res["accuracy"] <= 1
    assert 0 <= res["reference_accuracy"] <= 1 and res["split"] == "all", res

    summary = generate.main(["--project", "pp", "--models", "ppo-1", "sft-1", "--num_samples", "1",
                             "--limit_prompts", "5", "--max_new_tokens", "8", "--database_url", url, "--no_progress"])
    assert summary["tasks"]["compare"]["created"] == 5
    from sqlalchemy import select

    from db.models import Response, Task

    with session_scope(url) as s:
        ppo_id = registry.resolve(s, "ppo-1").id
        ppo_responses = set(s.scalars(select(Response.id).where(Response.model_version_id == ppo_id)))
        compare = list(s.scalars(select(Task).where(Task.kind == "compare")))
        assert len(ppo_responses) == 5 and sum(bool(ppo_responses & set(t.response_ids)) for t in compare) == 5


def test_ppo_resume_after_sigkill_is_exact(loop, tmp_path):
    """N updates straight == killed (SIGKILL) after a checkpoint + --resume: same weights, same metrics."""
    from safetensors.torch import load_file

    url, home = loop["url"], tmp_path / "runs"
    base = [sys.executable, "-m", "rlhf.train_ppo", "--model", "sft-1", "--reward_model", "rm-1", "--project", "pp",
            "--database_url", url, "--max_steps", "6", "--save_steps", "2", "--no_register", *PPO_ARGS]
    straight = subprocess.run(base + ["--name", "straight"], env=_env(home), cwd=ROOT, capture_output=True,
                              text=True, timeout=300, check=False)
    assert straight.returncode == 0, straight.stderr[-3000:]

    run = home / "train_ppo" / "killed"
    proc = subprocess.Popen(base + ["--name", "killed"], env=_env(home), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (run / "checkpoint-2" / "trainer_state.pt").is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "model.safetensors").exists(), "the run finished before it could be killed"
    resumed = subprocess.run(base + ["--name", "killed", "--resume"], env=_env(home), cwd=ROOT, capture_output=True,
                             text=True, timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr

    a = load_file(home / "train_ppo" / "straight" / "model.safetensors")
    b = load_file(run / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def curve(name):
        rows = [json.loads(x) for x in (home / "train_ppo" / name / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows if not r.get("final")]

    assert curve("straight") == curve("killed") and len(curve("killed")) == 6


def _as_reward_model(src: Path, dst: Path) -> Path:
    """A sequence-classification copy of a tiny LM, with its tokenizer (a random reward model)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    AutoModelForSequenceClassification.from_pretrained(src, num_labels=1).save_pretrained(dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    return dst


def _bad_models(tiny, d: Path) -> dict[str, Path]:
    from transformers import AutoModelForSequenceClassification

    out = {"rm": _as_reward_model(tiny, d / "rm"),
           "no_pad": _as_reward_model(H.build_tiny_lm(d / "nopad", pad=False), d / "rm_nopad"),
           "other_vocab": H.build_tiny_lm(d / "other", vocab_size=300, texts=H.corpus(100, seed=5))}
    rm = AutoModelForSequenceClassification.from_pretrained(out["other_vocab"], num_labels=1)
    rm.save_pretrained(d / "rm_no_tok")  # weights only: no tokenizer beside them
    out["rm_no_tok"] = d / "rm_no_tok"
    return out


@pytest.mark.parametrize("case", ["rm_no_pad", "rm_other_vocab_no_tokenizer", "reference_other_tokenizer",
                                  "empty_prompts", "no_room_for_response", "ptx_without_data", "rm_is_a_causal_lm",
                                  "rm_missing", "unknown_flag"])
def test_bad_input_is_refused_before_any_rollout(case, tiny, tmp_path, sqlite_url, home, capsys):
    from db.services import registry
    from db.session import session_scope
    from rlhf import train_ppo

    bad = _bad_models(tiny, tmp_path)
    prompts = H.write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"say {w}"} for w in H.WORDS[:10]])
    args = {"--model": str(tiny), "--reward_model": str(bad["rm"]), "--dataset": str(prompts), "--max_steps": "1"}
    expect = {"rm_no_pad": ("reward_model", str(bad["no_pad"]), "pad token"),
              "rm_other_vocab_no_tokenizer": ("reward_model", str(bad["rm_no_tok"]), "no tokenizer of its own"),
              "reference_other_tokenizer": ("reference_model", str(bad["other_vocab"]), "do not share a tokenizer"),
              "empty_prompts": ("dataset", str(H.write_jsonl(tmp_path / "e.jsonl", [])), "no rows"),
              "no_room_for_response": ("max_new_tokens", "256", "leaves no room"),
              "ptx_without_data": ("ptx_coef", "0.5", "needs pretraining data"),
              "rm_is_a_causal_lm": ("reward_model", str(tiny), "not a reward model"),
              "rm_missing": ("reward_model", str(tmp_path / "nope"), "field 'reward_model'"),
              "unknown_flag": ("max_new_tokenz", "3", "max_new_tokenz")}[case]
    args[f"--{expect[0]}"] = expect[1]
    argv = [x for kv in args.items() for x in kv] + ["--database_url", sqlite_url, "--name", "bad"]
    with pytest.raises(SystemExit) as e:
        train_ppo.main(argv)
    assert e.value.code == 2
    assert expect[2] in capsys.readouterr().err
    assert not (home / "train_ppo" / "bad").exists()  # nothing written before the checks
    with session_scope(sqlite_url) as s:
        assert not [mv for mv in registry.list_versions(s) if mv.name == "bad"]


@pytest.mark.slow
def test_ppo_under_torchrun_on_two_processes_registers_once(loop, tmp_path):
    from sqlalchemy import func, select

    from db.models import ModelVersion
    from db.session import session_scope

    url, home = loop["url"], tmp_path / "runs"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "rlhf.train_ppo", "--model", "sft-1", "--reward_model", "rm-1", "--project", "pp",
                        "--database_url", url, "--name", "ppo-ddp", "--max_steps", "2", "--save_steps", "1",
                        *PPO_ARGS], env=_env(home), cwd=ROOT, capture_output=True, text=True, timeout=400,
                       check=False)
    assert r.returncode == 0, r.stderr[-4000:]
    rows = [json.loads(x) for x in (home / "train_ppo" / "ppo-ddp" / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in rows if not x.get("final")]
    # two processes x 16 prompts per update: the episode count is the global batch
    assert [x["episode"] for x in steps] == [32, 64]
    with session_scope(url) as s:
        assert s.scalar(select(func.count()).select_from(ModelVersion).where(ModelVersion.name == "ppo-ddp")) == 1


@pytest.mark.parametrize("algo", ["rloo", "grpo"])
def test_trl_online_trainers_run_on_our_reward_model_and_register(algo, loop, monkeypatch):
    from db.services import registry
    from db.session import session_scope
    from rlhf import train_grpo, train_rloo

    monkeypatch.setenv("INSTRUCTLOOP_HOME", str(loop["home"]))
    main = {"rloo": train_rloo.main, "grpo": train_grpo.main}[algo]
    out = main(["--model", "sft-1", "--reward_model", "rm-1", "--project", "pp", "--name", f"{algo}-1",
                "--database_url", loop["url"], "--max_steps", "2", "--per_device_train_batch_size", "8",
                "--num_generations", "4", "--max_completion_length", "8", "--learning_rate", "1e-3",
                "--save_strategy", "no", "--disable_tqdm", "true", "--report_to", "none", "--seed", "0"])
    m = out["metrics"]
    assert m["global_step"] == 2 and {"eval/score", "eval/win_rate", "eval/kl"} <= set(m)
    logs = [json.loads(x) for x in (Path(out["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert any("rewards/rm-1/mean" in r for r in logs)  # TRL called our reward model
    with session_scope(loop["url"]) as s:
        mv = registry.resolve(s, f"{algo}-1")
        assert mv.kind == "policy" and registry.resolve(s, mv.parent_id).name == "sft-1"
        assert mv.config["algo"] == algo and mv.config["reward_model"]["name"] == "rm-1"
        assert mv.label_snapshot["ids"]["prompts"]
