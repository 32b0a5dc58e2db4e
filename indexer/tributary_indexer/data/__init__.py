"""Corpus records, tokenisation, tokenised examples and padded batches, the example store."""
