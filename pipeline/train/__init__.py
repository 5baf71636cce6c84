"""Training: the loop machinery (device, AMP, DDP, checkpoints, signals) and the stages."""
