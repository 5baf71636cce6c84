"""Networks. They know tensors, not files: nothing here imports io/, data/, config or tracking."""
