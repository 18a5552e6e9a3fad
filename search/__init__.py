"""The study: config, storage, sampler, pruner, Ray workers, MLflow tracking, reports."""
