"""Datasets: the embedded corpus, LRW/LRS2 layouts, acquisition and the clip manifest."""
