"""The dataset on disk: moshi-finetune's format (stereo wavs, alignments, manifests) plus our index files."""
