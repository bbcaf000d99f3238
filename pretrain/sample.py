"""Generate text from a pretrain checkpoint (run folder / ckpt.pt) or an exported HF directory.

    python -m pretrain.sample --model runs/pretrain/tiny-dense --prompt "The for statement" --max-new-tokens 80
    python -m pretrain.sample --model runs/hf/tiny-dense --temperature 0          # greedy
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


class LM:
    """A thin common interface over a native ``GPT`` checkpoint and a transformers causal LM."""

    def __init__(self, path: str | Path, device: str = "cpu"):
        p = Path(path)
        self.device = device
        if (p.is_dir() and (p / "ckpt.pt").is_file()) or p.suffix == ".pt":
            from pretrain.export import load_native, resolve_ckpt
            from pretrain.tokenizer import load_tokenizer

            self.model, _ = load_native(p, device)
            self.native = True
            self.tokenizer = load_tokenizer(resolve_ckpt(p).parent / "tokenizer")
            self.block_size = self.model.config.block_size
        elif p.is_dir() and (p / "config.json").is_file():
            from transformers import AutoModelForCausalLM, AutoTokenizer

            # eager: GPT-Neo's local window is only honoured by the eager attention path.
            self.model = AutoModelForCausalLM.from_pretrained(str(p), attn_implementation="eager").to(device)
            self.model.eval()
            self.native = False
            self.tokenizer = AutoTokenizer.from_pretrained(str(p))
            cfg = self.model.config
            self.block_size = getattr(cfg, "n_positions", None) or cfg.max_position_embeddings
        else:
            raise FileNotFoundError(f"no checkpoint (ckpt.pt) or HF model (config.json) at {p}")

    @torch.no_grad()
    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.to(self.device)
        return self.model(ids)[0] if self.native else self.model(ids).logits

    @torch.no_grad()
    def generate(self, ids: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
                 top_k: int | None = None, stop_at_eos: bool = True, seed: int | None = None) -> torch.Tensor:
        """Continue ``ids`` (1 x T); greedy when temperature is 0. Returns ONLY the new tokens (1 x n <= max_new_tokens).

        Prompt and continuation must fit in the context window together, so a prompt longer than
        ``block_size - max_new_tokens`` keeps its last tokens (the same for native and HF models).
        ``top_k`` of None or 0 means no top-k filtering.
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if max_new_tokens >= self.block_size:
            raise ValueError(f"max_new_tokens ({max_new_tokens}) must be smaller than the model's block_size "
                             f"({self.block_size}): prompt and continuation share the context window")
        if top_k is not None and top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}")
        top_k = top_k or None
        ids = ids.to(self.device)
        eos = self.tokenizer.eos_token_id if stop_at_eos else None
        ids = ids[:, -(self.block_size - max_new_tokens):]  # keep room for the continuation
        n_prompt = ids.shape[1]
        g = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
        if self.native:
            out = self.model.generate(ids, max_new_tokens, temperature=temperature, top_k=top_k,
                                      eos_token_id=eos, generator=g)
        else:
            if seed is not None:
                torch.manual_seed(seed)
            # transformers: top_k=0 disables the top-k filter (its default would be 50)
            kw = {"do_sample": False} if temperature == 0 else {"do_sample": True, "temperature": temperature,
                                                                      "top_k": top_k or 0}
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                      eos_token_id=eos, pad_token_id=self.tokenizer.pad_token_id, **kw)
        return out[:, n_prompt:]

    def complete(self, prompt: str, max_new_tokens: int = 64, **kw) -> str:
        """The decoded continuation of ``prompt`` (at most ``max_new_tokens`` tokens; see :meth:`generate`)."""
        ids = self.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        if ids.numel() == 0:  # an empty prompt starts from <|endoftext|>, i.e. a fresh document
            ids = torch.tensor([[self.tokenizer.eos_token_id]])
        out = self.generate(ids, max_new_tokens, **kw)
        return self.tokenizer.decode(out[0].tolist(), skip_special_tokens=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pretrain.sample", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="run folder / ckpt.pt of pretrain.train, or an exported HF dir")
    ap.add_argument("--prompt", default="", help="text to continue (default: start a new document)")
    ap.add_argument("--num-samples", type=int, default=1, help="how many continuations (default 1)")
    ap.add_argument("--max-new-tokens", type=int, default=100, help="tokens to generate per sample, < the model's block size; a longer prompt keeps "
                         "its last block_size - N tokens (default 100)")
    ap.add_argument("--temperature", type=float, default=0.8, help="softmax temperature; 0 = greedy (default 0.8)")
    ap.add_argument("--top-k", type=int, default=50, help="sample among the k most likely tokens; 0 = no top-k filter (default 50)")
    ap.add_argument("--seed", type=int, default=1337, help="random seed (default 1337)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="cpu or cuda (default: cuda if available)")
    args = ap.parse_args(argv)
    try:
        lm = LM(args.model, args.device)
        for i in range(args.num_samples):
            text = lm.complete(args.prompt, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                               seed=args.seed + i)
            print(args.prompt + text)
            if i + 1 < args.num_samples:
                print("-" * 40)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
