"""Data: instruction records, tokenized SFT examples, packing."""
