"""Training engine pieces: chunk-aware sampler, LR schedules, weight averaging, run logs, presets."""
