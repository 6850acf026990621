"""Evaluation harness: benchmark loaders, official scorers, judges, resumable inference and reports.

Inference (`runner`) writes predictions JSONL; scoring (`benchmarks.<name>.score`) reads only that file, so scores
can be recomputed without the model. See the README section "Evaluation".
"""
