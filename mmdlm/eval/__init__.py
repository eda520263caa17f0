"""Evaluation with its protocol attached: validation NLL (exact for AR, ELBO bound for diffusion),
generative perplexity under a reference LM with sample entropy, and a sampling-steps sweep."""
