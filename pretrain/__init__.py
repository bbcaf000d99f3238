"""GPT-2 base model from scratch: tokenizer, token shards, model, training, HF export, evaluation."""
