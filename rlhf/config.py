"""Job configuration: our arguments beside TRL's, and device-aware defaults.

Every training job has ONE dataclass = ``JobFields`` (ours: where the data and the model come from, where the
result goes) mixed *in front of* a TRL/HF ``TrainingArguments`` subclass, so ``python -m rlhf.<job> --help``
lists everything and ``TrlParser`` reads the same keys from ``--config job.yaml``:

    SFTJobConfig    = JobFields + DeviceDefaults + trl.SFTConfig
    RewardJobConfig = JobFields + RewardFields + DeviceDefaults + trl.RewardConfig
    PPOJobConfig    = JobFields + DeviceDefaults + rlhf.ppo_config.PPOConfig (ours, a TrainingArguments)
    KTOJobConfig    = JobFields + KTOFields + DeviceDefaults + trl.KTOConfig

``JobFields`` comes first in the MRO so its ``project`` replaces ``TrainingArguments.project`` (a trackio
setting we do not use). ``DeviceDefaults`` resolves ``bf16`` / ``gradient_checkpointing`` from the hardware
*before* TRL's ``__post_init__`` (which would otherwise turn bf16 on, failing on CPU).
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import Any

CHAT_FORMATS = ("auto", "always", "never")
# On CUDA, gradient checkpointing pays for itself only when activations are the memory problem.
CHECKPOINTING_MIN_PARAMS = 1_000_000_000
# Reward-model learning rate by model size (bench/reward_oasst.py measured the small side).
REWARD_LR_SMALL, REWARD_LR_LARGE, REWARD_SMALL_PARAMS = 1e-3, 1e-4, 30_000_000


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def bf16_available() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


@dataclass
class JobFields:
    """Arguments every InstructLoop training job shares (ours, not TRL's)."""

    model: str | None = field(default=None, metadata={
        "help": "Starting model: a registered model version (name or id), a local HF directory or a hub id. "
                "Unregistered paths are registered as 'external' versions so lineage stays complete."})
    project: str | None = field(default=None, metadata={
        "help": "InstructLoop project whose labels to train on (read from the database)."})
    dataset: str | None = field(default=None, metadata={
        "help": "A JSONL file instead of --project (the format `python -m db export` writes)."})
    eval_dataset: str | None = field(default=None, metadata={
        "help": "Held-out JSONL. Default: a deterministic slice of the training rows (--eval_fraction)."})
    eval_fraction: float = field(default=0.1, metadata={
        "help": "Share of prompts held out for evaluation (split by prompt, so no prompt is in both)."})
    name: str | None = field(default=None, metadata={
        "help": "Name of the model version to register (default: <job>-<project or file>-<timestamp>; on several "
                "processes <job>-<project or file>-<launcher run id>, and required when there is none)."})
    database_url: str | None = field(default=None, metadata={
        "help": "Database URL (default: $DATABASE_URL, else sqlite:///data/instructloop.sqlite3)."})
    register: bool = field(default=True, metadata={
        "help": "Register the trained model as a model version (--no_register to skip)."})
    resume: bool = field(default=False, metadata={
        "help": "Resume from the last checkpoint in the run folder (after a kill)."})
    chat_format: str = field(default="auto", metadata={
        "help": "Render prompts with the tokenizer's chat template: auto (when it has one, or the data is chat), "
                "always, never (plain 'prompt\\n' + completion).", "choices": list(CHAT_FORMATS)})
    attn_implementation: str = field(default="auto", metadata={
        "help": "Attention kernel passed on every load: auto (eager for GPT-Neo, sdpa otherwise), eager, sdpa, "
                "flash_attention_2."})
    max_rows: int | None = field(default=None, metadata={"help": "Use at most this many training rows."})
    stop_at_step: int | None = field(default=None, metadata={
        "help": "Save a checkpoint at this step and exit, as if killed there (time slices on a shared cluster); "
                "continue with --resume. Nothing is registered until the run finishes."})


@dataclass
class DeviceDefaults:
    """bf16 and gradient checkpointing default to what the device supports (None = decide here)."""

    bf16: bool | None = field(default=None, metadata={
        "help": "bf16 mixed precision. Default: on with a CUDA GPU that supports it, off on CPU (float32)."})
    gradient_checkpointing: bool | None = field(default=None, metadata={
        "help": "Gradient checkpointing. Default: off on CPU (it only slows training there); on CUDA, on for "
                "models of 1B+ parameters."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Keep at most this many checkpoints."})

    def _resolve_device_defaults(self) -> None:
        if self.bf16 is None:
            self.bf16 = bool(bf16_available()) and not getattr(self, "fp16", False)
        if not cuda_available():
            self.dataloader_pin_memory = False  # nothing to pin to (and it warns on every run)
            # Say CPU explicitly: only then does accelerate treat torchrun / `accelerate launch` processes as one
            # gloo job (MULTI_CPU); otherwise every process trains alone on all the data. It also lets bf16 run
            # as CPU autocast (else transformers stops with "Your setup doesn't support bf16/gpu").
            self.use_cpu = True
        # transformers 5 renamed it activation_checkpointing (the old name is a deprecated alias).
        ac = getattr(self, "activation_checkpointing", None)
        chosen = ac if ac is not None else self.gradient_checkpointing
        self._checkpointing_auto = chosen is None
        self.gradient_checkpointing = None
        if hasattr(self, "activation_checkpointing"):
            self.activation_checkpointing = bool(chosen)
        else:
            self.gradient_checkpointing = bool(chosen)
        self._output_dir_given = getattr(self, "output_dir", None) is not None

    def finalize_for_model(self, model: Any) -> None:
        """Turn checkpointing on for big models on CUDA when the user left it unset."""
        if getattr(self, "_checkpointing_auto", False) and cuda_available():
            n = sum(p.numel() for p in model.parameters())
            self.gradient_checkpointing = n >= CHECKPOINTING_MIN_PARAMS
            if hasattr(self, "activation_checkpointing"):
                self.activation_checkpointing = self.gradient_checkpointing


def _job_config(base: type, extra: tuple[type, ...] = (), doc: str = "") -> type:
    """JobFields (+ extra) + DeviceDefaults in front of a TRL config class."""

    @dataclass
    class Cfg(JobFields, *extra, DeviceDefaults, base):  # type: ignore[misc,valid-type]
        def __post_init__(self) -> None:
            self._resolve_device_defaults()
            getattr(self, "_resolve_job_defaults", lambda: None)()
            if self.chat_format not in CHAT_FORMATS:
                raise ValueError(f"--chat_format must be one of {', '.join(CHAT_FORMATS)}")
            base.__post_init__(self)

    Cfg.__doc__ = doc
    return Cfg


def sft_config_class() -> type:
    from trl import SFTConfig

    global SFTJobConfig
    if SFTJobConfig is None:
        @dataclass
        class SFTFields:
            statuses: str = field(default="accepted", metadata={
                "help": "Demonstration statuses to train on, comma-separated (accepted, submitted)."})
            max_length: int | None = field(default=None, metadata={
                "help": "Longest training sequence in tokens (default and upper bound: the model's context). "
                        "Longer rows keep their completion whole and the end of their prompt (rlhf/truncation.py); "
                        "a row whose completion alone is longer is left out and counted."})

        SFTJobConfig = _job_config(SFTConfig, (SFTFields,), "rlhf.train_sft configuration")
        SFTJobConfig.__name__ = SFTJobConfig.__qualname__ = "SFTJobConfig"
    return SFTJobConfig


def reward_config_class() -> type:
    from trl import RewardConfig

    global RewardJobConfig
    if RewardJobConfig is None:
        @dataclass
        class RewardFields:
            # Defaults measured on OpenAssistant rankings (bench/reward_oasst.py): TRL's 1e-4 left the train loss
            # at ln 2 on our small bases; 1e-3 for 2 epochs learned most (see README).
            learning_rate: float | None = field(default=None, metadata={
                "help": "AdamW peak learning rate. Default: 1e-3 for models under 30M parameters (the project's "
                        "own bases; measured by bench/reward_oasst.py), else TRL's 1e-4."})
            num_train_epochs: float = field(default=2.0, metadata={
                "help": "Epochs over the rankings (2: measured by bench/reward_oasst.py; --max_steps overrides)."})
            warmup_steps: float = field(default=0.1, metadata={
                "help": "Linear warmup: a number of steps, or a share of all steps when below 1."})
            max_length: int | None = field(default=None, metadata={
                "help": "Longest sequence (prompt + one response) in tokens (default and upper bound: the model's "
                        "context). Longer ones keep the response whole and the end of the prompt "
                        "(rlhf/truncation.py; evaluation and PPO scoring cut the same way); a pair is left out only "
                        "when a response alone is longer, and counted (train_pairs_too_long)."})
            aggregate: str = field(default="majority", metadata={
                "help": "Several annotators on one task: majority, all, unanimous."})
            use_margin: bool = field(default=True, metadata={
                "help": "Use the label strength as TRL's margin (loss = -logsigmoid(r_c - r_r - margin))."})
            normalize: bool = field(default=True, metadata={
                "help": "Shift the reward so SFT demonstrations score mean 0 (InstructGPT)."})
            normalize_dataset: str | None = field(default=None, metadata={
                "help": "SFT JSONL whose completions define reward 0 (default: the project's demonstrations, "
                        "else the chosen responses of the training data)."})
            group_rankings: bool = field(default=True, metadata={
                "help": "InstructGPT: one ranked task is one training row: its K responses are scored once each "
                        "and its C(K,2) pair losses averaged, so a ranking weighs as one example, not C(K,2). "
                        "Batches hold per_device_train_batch_size rankings (a plain comparison is a ranking of two). "
                        "Only applies when the data has rankings (a 'group' column); --no_group_rankings trains "
                        "every pair as its own row. Held-out accuracy is per pair either way."})
            from_ratings: bool = field(default=False, metadata={
                "help": "Train a pointwise reward model on good/bad ratings of single responses (rate tasks, or a "
                        "--dataset of TRL unpaired rows {prompt, completion, label}) with binary cross-entropy: the "
                        "score is the log-odds of 'good' (rlhf/pointwise_reward.py). --aggregate combines several "
                        "ratings of one task; the pairwise options (--use_margin, --group_rankings) do not apply."})
            add_pad_token: bool = field(default=False, metadata={
                "help": "If the tokenizer has no pad token distinct from EOS, add '<|pad|>' and resize the "
                        "embeddings (otherwise that is an error)."})

            def _resolve_job_defaults(self) -> None:
                # the default learning rate depends on the model's size: a placeholder until it is loaded
                self._learning_rate_auto = self.learning_rate is None
                if self._learning_rate_auto:
                    self.learning_rate = REWARD_LR_LARGE

            def finalize_learning_rate(self, model: Any) -> None:
                if getattr(self, "_learning_rate_auto", False):
                    n = sum(p.numel() for p in model.parameters())
                    self.learning_rate = REWARD_LR_SMALL if n < REWARD_SMALL_PARAMS else REWARD_LR_LARGE

        RewardJobConfig = _job_config(RewardConfig, (RewardFields,), "rlhf.train_reward configuration")
        RewardJobConfig.__name__ = RewardJobConfig.__qualname__ = "RewardJobConfig"
    return RewardJobConfig


def kto_config_class() -> type:
    """JobFields + KTOFields + DeviceDefaults + trl.KTOConfig (rlhf.train_kto)."""
    from trl import KTOConfig

    global KTOJobConfig
    if KTOJobConfig is None:
        @dataclass
        class KTOFields:
            aggregate: str = field(default="majority", metadata={
                "choices": ["majority", "all", "unanimous"],
                "help": "Several annotators rating one response: majority (an even split is left out), all (one "
                        "row per rating), unanimous."})
            balance: bool = field(default=True, metadata={
                "help": "Weigh good and bad ratings alike: when --desirable_weight and --undesirable_weight are "
                        "both left at 1, set desirable_weight = n_bad / n_good (the KTO paper: "
                        "desirable_weight x n_good / (undesirable_weight x n_bad) within [1, 4/3])."})
            # TRL's own help says "truncated from the right"; our collator keeps the completion and cuts the prompt
            # from the left (rlhf/train_kto.py left_truncating_collator).
            max_length: int | None = field(default=1024, metadata={
                "help": "Longest sequence (prompt + completion) in tokens, never more than the model's context. "
                        "Longer rows keep their completion whole and the end of their prompt (the prompt is cut "
                        "from the left, rlhf/truncation.py); a row whose completion alone is longer is left out "
                        "and counted."})

        KTOJobConfig = _job_config(KTOConfig, (KTOFields,), "rlhf.train_kto configuration")
        KTOJobConfig.__name__ = KTOJobConfig.__qualname__ = "KTOJobConfig"
    return KTOJobConfig


def ppo_config_class() -> type:
    from rlhf.ppo_config import PPOConfig

    global PPOJobConfig
    if PPOJobConfig is None:
        PPOJobConfig = _job_config(PPOConfig, (), "rlhf.train_ppo configuration")
        PPOJobConfig.__name__ = PPOJobConfig.__qualname__ = "PPOJobConfig"
    return PPOJobConfig


SFTJobConfig: Any = None
RewardJobConfig: Any = None
PPOJobConfig: Any = None
KTOJobConfig: Any = None


# What a `--no_<flag>` does, where "Turn --<flag> off." would not say enough.
NO_FLAG_HELP = {
    "balance": "Keep --desirable_weight and --undesirable_weight as given (1 and 1 by default): good and bad "
               "ratings weigh by their counts (turns --balance off).",
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the module docstring's layout in --help, and show defaults."""


def parse(config_cls: type, argv: list[str] | None, prog: str, description: str) -> Any:
    """Parse argv (+ ``--config file.yaml``) into the job's config."""
    from trl import TrlParser

    from db.services.errors import InputError

    parser = TrlParser((config_cls,), prog=prog, description=description, formatter_class=HelpFormatter)
    for action in parser._actions:  # HfArgumentParser gives `--no_x` the help of `--x`: say what it does first
        if action.option_strings and action.option_strings[0].startswith("--no_") and action.help:
            action.help = NO_FLAG_HELP.get(action.dest, f"Turn --{action.dest} off.")
    try:
        (cfg,) = parser.parse_args_and_config(args=argv)
    except ValueError as e:  # unknown flags ("Some specified arguments are not used") or a refused setting
        raise InputError(f"{e} (see {prog} --help)") from e
    return cfg


def default_run_dir(job: str, name: str) -> str:
    from db.settings import home

    return os.fspath(home() / job / name)
