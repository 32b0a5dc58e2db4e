"""Corpus records and their checks, tokenisation, tokenised examples and padded batches, the example
store and which records an index already holds."""
