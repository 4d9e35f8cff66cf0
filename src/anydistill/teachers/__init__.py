"""Where the target distribution comes from: the online model (train/step.py) or the offline
top-k cache (`teachers.cache`: writer, reader, codec)."""
