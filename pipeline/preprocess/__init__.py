"""Preprocessing: faces (mediapipe), aligned crops, mel spectrograms, the sharded store."""
