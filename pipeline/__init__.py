"""SyncTalkFace pipeline: data, training, evaluation and inference stages as one package."""

__version__ = "0.1.0"
