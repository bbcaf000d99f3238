"""PPO settings (InstructGPT step 3), in the manner of TRL's ``<algo>_config.py``.

Batch sizes, as in TRL's on-policy trainers (per process):

    micro-batch  = per_device_train_batch_size                     (one forward/backward)
    mini-batch   = micro-batch x gradient_accumulation_steps        (one optimizer step)
    rollout      = mini-batch x num_mini_batches                    (prompts sampled per PPO update)

Each update samples one rollout batch of prompts, scores it, and runs ``num_ppo_epochs`` passes over it in
shuffled mini-batches. ``max_steps`` counts PPO updates (else ``num_train_epochs`` passes over the prompts).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

KL_ESTIMATORS = ("k1", "k3")


@dataclass
class PPOConfig(TrainingArguments):
    """Configuration of :class:`rlhf.ppo_trainer.PPOTrainer` (a ``TrainingArguments``: lr, seed, batch sizes,
    ``max_grad_norm``, schedulers, ``save_steps``, ``report_to`` and the rest keep their usual meaning)."""

    learning_rate: float = field(default=1e-5, metadata={"help": "AdamW learning rate of policy and value."})
    per_device_train_batch_size: int = field(default=8, metadata={
        "help": "Prompts per micro-batch (one forward/backward). Rollout per update and process = this x "
                "--gradient_accumulation_steps x --num_mini_batches."})
    max_steps: int = field(default=-1, metadata={
        "help": "PPO updates (each: one rollout batch, then --num_ppo_epochs passes); -1: --num_train_epochs "
                "passes over the prompts."})
    logging_steps: float = field(default=1, metadata={"help": "Log every this many PPO updates."})
    save_steps: float = field(default=20, metadata={"help": "Checkpoint every this many PPO updates."})
    # ---- models
    reward_model: str | None = field(default=None, metadata={
        "help": "Reward model (registered `reward` version, directory or hub id). Required."})
    reference_model: str | None = field(default=None, metadata={
        "help": "Frozen reference for the KL penalty (default: --model, the SFT policy PPO starts from)."})
    value_model: str | None = field(default=None, metadata={
        "help": "Initial value model, a sequence-classification model (default: the reward model, as in "
                "InstructGPT)."})
    share_value_backbone: bool = field(default=False, metadata={
        "help": "Instead of a separate value model, put a value head on the policy's last hidden state (one "
                "model fewer in memory; policy and value then share gradients)."})
    inference_dtype: str = field(default="auto", metadata={
        "help": "Weights dtype of the frozen reference and reward models: auto (bfloat16 on a CUDA GPU that "
                "supports it, else float32), float32, bfloat16.", "choices": ["auto", "float32", "bfloat16"]})
    # ---- rollouts
    num_mini_batches: int = field(default=1, metadata={
        "help": "Mini-batches (optimizer steps) per rollout batch and PPO epoch; see --per_device_train_batch_size."})
    num_ppo_epochs: int = field(default=4, metadata={"help": "PPO passes over each rollout batch."})
    local_rollout_forward_batch_size: int = field(default=64, metadata={
        "help": "Sequences per no-grad forward pass (reference, reward, value) while scoring a rollout."})
    max_new_tokens: int = field(default=64, metadata={"help": "Longest response, in tokens."})
    max_prompt_length: int | None = field(default=None, metadata={
        "help": "Longest prompt, in tokens (default: the policy's context minus --max_new_tokens); longer prompts "
                "keep their end (left truncation)."})
    temperature: float = field(default=1.0, metadata={
        "help": "Sampling temperature of rollouts (logprobs are computed at the same temperature)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling of rollouts (1 = off)."})
    top_k: int = field(default=0, metadata={"help": "Top-k sampling of rollouts (0 = off)."})
    missing_eos_penalty: float | None = field(default=None, metadata={
        "help": "Subtract this from the score of a response cut by --max_new_tokens (no EOS), so the policy "
                "learns to finish its answers."})
    # ---- rewards
    kl_coef: float = field(default=0.05, metadata={
        "help": "beta: weight of the per-token KL penalty log pi(y_t) - log pi_ref(y_t) (the initial value with "
                "--adaptive_kl)."})
    adaptive_kl: bool = field(default=False, metadata={
        "help": "Adapt beta toward --target_kl (Ziegler et al. 2019): beta *= 1 + clip(KL/target - 1, +-0.2) * "
                "n / horizon."})
    target_kl: float = field(default=6.0, metadata={
        "help": "KL (nats per response, summed over tokens) that the adaptive controller aims at; also the bound "
                "PPO's held-out KL is reported against."})
    kl_horizon: int = field(default=10000, metadata={"help": "Horizon of the adaptive KL controller, in episodes."})
    kl_estimator: str = field(default="k1", metadata={
        "help": "Per-token KL estimate in the reward: k1 = log ratio (unbiased), k3 = (r - 1) - log r "
                "(non-negative, lower variance).", "choices": list(KL_ESTIMATORS)})
    whiten_rewards: bool = field(default=False, metadata={"help": "Whiten the per-token rewards of each batch."})
    reward_clip: float | None = field(default=None, metadata={"help": "Clip scores to [-c, c] before the KL term."})
    # ---- learning
    gamma: float = field(default=1.0, metadata={"help": "Discount of GAE (InstructGPT: 1)."})
    lam: float = field(default=0.95, metadata={"help": "lambda of GAE."})
    cliprange: float = field(default=0.2, metadata={"help": "PPO's policy ratio clip epsilon."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Clip of the value update around old values."})
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss."})
    whiten_advantages: bool = field(default=True, metadata={"help": "Whiten advantages per rollout batch."})
    # ---- PPO-ptx
    ptx_coef: float = field(default=0.0, metadata={
        "help": "PPO-ptx: weight of a language-model loss on pretraining text (InstructGPT's gamma; not --gamma, "
                "which is GAE's discount). 0 = plain PPO."})
    ptx_data: str | None = field(default=None, metadata={
        "help": "Pretraining data for PPO-ptx: a pretrain/ token-shard folder (meta.json + train.bin) or a text "
                "file (.txt / .jsonl with a 'text' field) tokenized with the policy's tokenizer."})
    ptx_batch_size: int | None = field(default=None, metadata={
        "help": "Pretraining windows per micro-batch (default: per_device_train_batch_size)."})
    ptx_block_size: int = field(default=128, metadata={"help": "Tokens per pretraining window."})

    def __post_init__(self) -> None:
        super().__post_init__()
        problems = []
        if self.kl_estimator not in KL_ESTIMATORS:
            problems.append(f"--kl_estimator must be one of {', '.join(KL_ESTIMATORS)}")
        for name in ("num_mini_batches", "num_ppo_epochs", "max_new_tokens", "local_rollout_forward_batch_size",
                     "ptx_block_size"):
            if getattr(self, name) < 1:
                problems.append(f"--{name} must be >= 1")
        if self.kl_coef < 0 or self.ptx_coef < 0 or self.vf_coef < 0:
            problems.append("--kl_coef, --ptx_coef and --vf_coef must be >= 0")
        if self.adaptive_kl and self.target_kl <= 0:
            problems.append("--adaptive_kl needs --target_kl > 0")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def mini_batch_size(self) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps

    @property
    def rollout_batch_size(self) -> int:
        """Prompts sampled per PPO update on one process."""
        return self.mini_batch_size * self.num_mini_batches
