"""Workers of queue `train`: the `train` job kind (torchrun supervision, checkpoint sync, Kubeflow launcher)."""
