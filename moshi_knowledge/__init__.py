"""moshi-knowledge: can finetuning Moshi teach it new facts from spoken Q/A?"""

__version__ = "0.1.0"
