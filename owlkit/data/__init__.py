"""Data: record formats, dataset readers and the collator."""
