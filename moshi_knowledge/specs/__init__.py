"""Settings of torch-side classes as plain dataclasses, each with the config schema of its option.

model/ imports torch on import (it sets moshi's compile switch first), so a spec kept there would load torch for
every config composition and shell completion; here it stays light. config_schema registers the SCHEMAS.
"""
