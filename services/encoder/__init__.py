"""Workers of queue `encode`: `prepare-data` (corpus -> tokenized `dataset` artifact) and `encode` (a dataset
or texts -> `latent-dataset`, split into `encode-shard` tasks that any encode worker takes part in)."""
