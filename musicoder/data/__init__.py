"""The training loader (DESIGN §7): a shard set's epoch split per rank and worker (`plan`),
`ShardStream` and its DataLoader with exact resume positions (`stream`), and collation into
normalized `Batch`es (`collate`). Reads shards only through `musicoder.shardset`.
"""
