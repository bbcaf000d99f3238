"""Long inputs are cut one way everywhere (rlhf/truncation.py), and a ranking is one reward-training row."""
from __future__ import annotations

import pytest
import torch

from tests import rlhf_helpers as H

CONTEXT = 32
LONG = " ".join(H.WORDS * 2)  # far more than 32 tokens


def test_truncate_left_keeps_the_response_and_the_end_of_the_prompt():
    from rlhf.truncation import truncate_left, truncate_prompt

    ids = list(range(100, 110)) + [1, 2, 3]  # 10 prompt tokens, then a 3-token response
    f = truncate_left(ids, 10, 8)
    assert f.ids == [105, 106, 107, 108, 109, 1, 2, 3] and f.prompt_len == 5 and f.cut == 5 and f.fits
    bos = truncate_left([0] + ids, 11, 8, bos_id=0)  # a leading BOS stays at the front
    assert bos.ids == [0, 106, 107, 108, 109, 1, 2, 3] and bos.cut == 6
    assert truncate_left(ids, 10, 20).ids == ids and truncate_left(ids, 10, None).cut == 0
    assert not truncate_left(ids, 10, 2).fits  # the response alone does not fit
    assert truncate_prompt(list(range(10)), 4).ids == [6, 7, 8, 9]


def _forward_inputs(module: torch.nn.Module) -> tuple[list[list[int]], object]:
    """Record the unpadded token rows every forward of `module` receives."""
    seen: list[list[int]] = []

    def hook(_m, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        for j in range(ids.shape[0]):
            row = ids[j] if mask is None else ids[j][mask[j].bool()]
            seen.append(row.tolist())

    return seen, module.register_forward_pre_hook(hook, with_kwargs=True)


def test_long_pair_is_cut_from_the_left_identically_in_training_evaluation_and_ppo(tmp_path, home):
    from rlhf import reward, train_reward, train_sft
    from rlhf.formatting import encode, format_preference_row, format_sft_row
    from rlhf.train_ppo import RewardScorer, render_prompts
    from rlhf.truncation import encode_prompt_completion

    short = H.build_tiny_lm(tmp_path / "short", chat=False, n_positions=CONTEXT)
    pairs = [{"prompt": p, "chosen": g, "rejected": b} for p, g, b in H.polite_pairs(6)]
    long_pair = {"prompt": LONG, "chosen": "please sit", "rejected": "sit"}
    too_long = {"prompt": "hi", "chosen": LONG, "rejected": "sit"}  # a response alone longer than the context
    f = H.write_jsonl(tmp_path / "train.jsonl", [*pairs, long_pair, too_long])
    out = train_reward.main(["--model", str(short), "--dataset", str(f), "--eval_fraction", "0", "--no_register",
                             "--no_normalize", "--max_steps", "1", "--save_strategy", "no", "--disable_tqdm", "true",
                             "--output_dir", str(tmp_path / "rm")])
    m, trainer = out["metrics"], out["trainer"]
    assert m["max_length"] == CONTEXT and m["train_pairs"] == 8
    assert m["train_pairs_truncated"] == 1 and m["train_pairs_too_long"] == 1
    tok = trainer.processing_class
    chat = reward.info(trainer.model)["chat_template"]  # as the job rendered it (the helper's tokenizer has one)
    prompt = format_preference_row(long_pair, chat)["prompt"]
    sides = [format_preference_row(long_pair, chat)[k] for k in ("chosen", "rejected")]
    trained = [r for r in trainer.train_dataset["response_ids"] if len(r[0]) == CONTEXT]
    assert len(trained) == 1 and len(trainer.train_dataset) == 7  # the too-long pair is left out
    for side, ids in zip(sides, trained[0]):
        full, n_prompt = encode_prompt_completion(tok, prompt, side)
        assert full == encode(tok, prompt, side) and len(full) > CONTEXT
        response = full[n_prompt:]
        assert ids[-len(response):] == response  # the response whole (and its EOS) ...
        assert ids[:-len(response)] == full[:n_prompt][-(CONTEXT - len(response)):]  # ... the prompt's end

    # evaluation scores exactly those ids, and leaves the too-long pair out as training did
    model = trainer.model
    seen, handle = _forward_inputs(model.transformer)
    held = reward.evaluate_pairs(model, tok, [format_preference_row(r, chat) for r in (long_pair, too_long)])
    handle.remove()
    assert held["pairs"] == 1 and held["truncated_pairs"] == 1 and held["pairs_too_long"] == 1
    assert sorted(seen) == sorted(trained[0])

    # PPO scoring (same vocabulary: the policy's prompt ids + sampled response ids) cuts the same way
    scorer = RewardScorer(model, tok, tok, {}, chat=chat, same_vocab=True)
    q = torch.tensor(render_prompts(tok, [long_pair], chat, budget=10 ** 6)[0])
    resp = tok("please sit", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    seen, handle = _forward_inputs(model.transformer)
    scorer(q, torch.ones_like(q), torch.tensor([resp]), torch.ones(1, len(resp), dtype=torch.long))
    handle.remove()
    assert seen == [trained[0][0]]

    # SFT: the same rule on (prompt, completion) rows; TRL's own keep-start truncation never cuts a completion
    sft_file = H.write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "say hi", "completion": "hello please"},
                                                     {"prompt": LONG, "completion": "please sit"},
                                                     {"prompt": "hi", "completion": LONG}])
    sft = train_sft.main(["--model", str(short), "--dataset", str(sft_file), "--eval_fraction", "0",
                          "--no_register", "--max_steps", "1", "--save_strategy", "no", "--disable_tqdm", "true",
                          "--output_dir", str(tmp_path / "sft")])
    sm = sft["metrics"]
    assert sm["max_length"] == CONTEXT and sm["train_rows_truncated"] == 1 and sm["train_rows_too_long"] == 1
    ds = sft["trainer"].train_dataset
    assert len(ds) == 2
    long_row = next(r for r in ds if len(r["input_ids"]) == CONTEXT)
    assert long_row["input_ids"] == trained[0][0]
    sft_row = format_sft_row({"prompt": LONG, "completion": "please sit"}, chat)
    full, n_prompt = encode_prompt_completion(tok, sft_row["prompt"], sft_row["completion"])
    n_resp = len(full) - n_prompt
    assert [t for t, lab in zip(long_row["input_ids"], long_row["labels"]) if lab != -100] == full[n_prompt:]
    assert long_row["labels"][:-n_resp] == [-100] * (CONTEXT - n_resp)


def test_a_ranking_of_four_is_one_row_six_pair_losses_in_four_forward_passes(tiny):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhf import data
    from rlhf.formatting import format_preference_row
    from rlhf.reward_trainer import RankingCollator, ranking_loss, tokenize_rankings

    best_first = ["please sit down please", "please sit", "sit", "go away"]
    pairs = [{"prompt": "rank", "chosen": best_first[i], "rejected": best_first[j], "margin": 0.0,
              "group": "task-1"} for i in range(4) for j in range(i + 1, 4)]
    # another rank task of the same prompt: its own row (grouped by task, not by prompt)
    pairs.append({"prompt": "rank", "chosen": "sit", "rejected": "go away", "group": "task-2"})
    rows = data.ranking_rows([format_preference_row(p, chat=False) for p in pairs])
    assert len(rows) == 2 and rows[0]["responses"] == best_first and len(rows[0]["pairs"]) == 6
    assert len(rows[1]["responses"]) == 2 and len(rows[1]["pairs"]) == 1

    tok = AutoTokenizer.from_pretrained(tiny)
    rm = AutoModelForSequenceClassification.from_pretrained(tiny, num_labels=1, attn_implementation="sdpa")
    rm.config.pad_token_id = tok.pad_token_id
    tokenized = tokenize_rankings(tok, rows[:1], max_length=None)
    batch = RankingCollator(pad_token_id=tok.pad_token_id)(tokenized.rows)
    seen, handle = _forward_inputs(rm.transformer)
    rewards = rm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
    handle.remove()
    assert len(seen) == 4  # each response scored once (pairs fed as pairs would score 12)
    loss, per_pair = ranking_loss(rewards, batch["pair_index"], batch["pair_row"], batch["pair_margin"])
    assert per_pair.shape == (6,)
    r = rewards.detach()
    want = [-torch.nn.functional.logsigmoid(r[i] - r[j]) for i in range(4) for j in range(i + 1, 4)]
    assert per_pair.detach().tolist() == pytest.approx([w.item() for w in want], abs=1e-6)
    assert loss.item() == pytest.approx(sum(want).item() / 6, abs=1e-6)


def test_ranking_loss_weighs_every_row_alike():
    from rlhf.reward_trainer import ranking_loss

    rewards = torch.tensor([1.0, 0.0, -1.0, 2.0, 0.5])  # row 0: 3 responses (3 pairs); row 1: 2 responses
    index = torch.tensor([[0, 1], [0, 2], [1, 2], [3, 4]])
    row = torch.tensor([0, 0, 0, 1])
    margin = torch.tensor([0.0, 0.5, 0.0, 1.0])
    per = -torch.nn.functional.logsigmoid(rewards[index[:, 0]] - rewards[index[:, 1]] - margin)
    loss, got = ranking_loss(rewards, index, row, margin)
    assert torch.allclose(got, per) and torch.allclose(loss, (per[:3].mean() + per[3]) / 2)
