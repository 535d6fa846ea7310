"""The code-stream conventions that training and recall share: the 17 streams of a sample and their constants
(`samples`), the LM's delays and padding ids (`stream.StreamSpec`), the text stream of aligned words
(`text_stream`), and Mimi encoding with the tokenize stage (`encode`).

The package itself imports nothing heavy; the modules that import moshi need NO_TORCH_COMPILE=1 set before, on
CPU (docs/moshi.md, compilation).
"""
