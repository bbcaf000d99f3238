"""InstructGPT steps 1-2 on the labels in the database (DESIGN.md §1, §6).

Jobs (each has ``--help``; TRL/HF arguments plus ``--config job.yaml``):

- ``python -m rlhf.generate``: sample responses from model versions, store them, create annotation tasks.
- ``python -m rlhf.train_sft``: supervised fine-tuning on demonstrations (TRL ``SFTTrainer``).
- ``python -m rlhf.train_reward``: pairwise reward model on preferences and rankings (TRL ``RewardTrainer``).
- ``python -m rlhf.evaluate reward``: score any preference file with any reward model.

Layout: ``config.py`` (shared job arguments + device-aware TRL configs; a later ``ppo_config.py`` subclasses the
same pieces), ``data.py`` (database and JSONL → ``datasets.Dataset``, one code path), ``formatting.py`` (how a
prompt becomes model input, shared by generation and training), ``modeling.py`` (resolve/load models),
``runs.py`` (run folder, metrics.jsonl, registration), ``reward.py`` (scoring, metrics, bias normalization).
"""
