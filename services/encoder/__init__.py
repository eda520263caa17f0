"""Workers of queue `encode`: `prepare-data` (corpus -> tokenized `dataset` artifact); `encode` later."""
