"""THE shard format (DESIGN §5): names, versions and keys (`format`), shard index and manifest
types (`index`, `manifest`), the one tar writer (`writer`) and the one tar reader (`reader`),
and sample decoding with its checks (`sample`). The sharder writes through it; the training
loader and `downstream/embed.py` read through it. Uses `musicoder.storage` only.
"""
