"""Train a byte-level BPE tokenizer and save it as a transformers tokenizer.

    python -m pretrain.tokenizer --out runs/tok --vocab-size 4096            # CPython docs corpus
    python -m pretrain.tokenizer --out runs/tok --input a.txt b.jsonl

The result loads with ``AutoTokenizer.from_pretrained(dir)``: ``<|endoftext|>`` is bos/eos, ``<|pad|>`` is a
separate pad token (TRL needs pad != eos), and the chat template wraps assistant content in
``{% generation %}`` markers so TRL's ``assistant_only_loss`` can mask everything else.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

EOS = "<|endoftext|>"
PAD = "<|pad|>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
SPECIAL_TOKENS = [EOS, PAD, *ROLE_TOKENS]

# Role markers are single special tokens; the assistant turn (content + EOS) is the "generation" span.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|assistant|>\n' }}{% generation %}{{ message['content'] + '<|endoftext|>' }}{% endgeneration %}"
    "{{ '\n' }}"
    "{%- else -%}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\n' }}{%- endif -%}"
)


def train_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 4096,
                    min_frequency: int = 2, model_max_length: int = 1024):
    """Train byte-level BPE on ``texts`` and save a ``PreTrainedTokenizerFast`` to ``out_dir``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be >= {len(alphabet) + len(SPECIAL_TOKENS)} (256 bytes + specials)")
    tok = Tokenizer(models.BPE())
    # add_prefix_space=False keeps decode(encode(s)) == s exactly.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=SPECIAL_TOKENS, initial_alphabet=alphabet,
                                  show_progress=False)
    tok.train_from_iterator(_batched(texts), trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=PAD,
        additional_special_tokens=ROLE_TOKENS, model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    hf.chat_template = CHAT_TEMPLATE
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(str(out_dir))
    return hf


def _batched(texts: Iterable[str], size: int = 256) -> Iterator[list[str]]:
    batch: list[str] = []
    for t in texts:
        batch.append(t)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def load_tokenizer(path: str | Path):
    """Load a tokenizer saved by :func:`train_tokenizer` (or any HF tokenizer directory)."""
    from transformers import AutoTokenizer

    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"tokenizer directory not found: {p}")
    return AutoTokenizer.from_pretrained(str(p))


def main(argv: list[str] | None = None) -> None:
    from pretrain.corpus import add_corpus_args, iter_corpus_from_args

    ap = argparse.ArgumentParser(prog="python -m pretrain.tokenizer", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory for the tokenizer files")
    ap.add_argument("--vocab-size", type=int, default=4096,
                    help="BPE vocabulary size including the 256 byte tokens and specials (default 4096)")
    ap.add_argument("--min-frequency", type=int, default=2,
                    help="minimum pair count for a merge (default 2)")
    ap.add_argument("--model-max-length", type=int, default=1024,
                    help="model_max_length stored in the tokenizer config (default 1024)")
    add_corpus_args(ap)
    args = ap.parse_args(argv)
    try:
        texts = iter_corpus_from_args(args)
        hf = train_tokenizer(texts, args.out, args.vocab_size, args.min_frequency, args.model_max_length)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(f"saved tokenizer with {len(hf)} tokens to {args.out}")


if __name__ == "__main__":
    main()
