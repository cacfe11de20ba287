"""pojax.data: preference data formats, tokenization, packing, pipelines and the gold-reward gym."""
