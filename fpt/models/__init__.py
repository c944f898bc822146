"""Floor 4: the FPT model on a body (bodies, the model, LoRA, cached features, precision), and the factory that builds a config's model row."""
