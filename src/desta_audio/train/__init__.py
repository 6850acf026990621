"""Training: typed config (`config`), records, duration-bucketed sampler, frozen-encoder feature cache, the
recipe (adapter-only by default; LoRA on the LLM or encoder; DDP under torchrun), checkpoints and metrics.
Command: `desta train CONFIG [section.key=value ...]`."""
