"""The building blocks every config model is made of: field types, key paths, polling timings.

This package sits below both the config loader (`poller.config`) and the source types
(`poller.sources`, whose packages hold their own config models): it imports neither, so a
source type's model can use these blocks without an import cycle. `fields` holds the field
types and the durations, rates and URLs they read; `paths` the key paths and the places whose
values are kept as written; `polling` the frozen base model and the polling timings.
"""
