"""Story backends: invent (or read) the out-of-distribution world the model must learn."""
