"""Workers of queue `encode`: `prepare-data` (corpus -> tokenized `dataset` artifact), `encode` (a dataset
or texts -> `latent-dataset`, split into `encode-shard` tasks that any encode worker takes part in) and
`clusters` (a dataset's or model's tokenizer -> HDLM `clusters` artifact)."""
