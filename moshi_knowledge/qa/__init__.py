"""Q/A backends: the training pairs and the held-out questions the model is tested on."""
