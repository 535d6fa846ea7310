"""Speech: TTS backends, stereo layouts and word aligners."""
