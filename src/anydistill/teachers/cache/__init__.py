"""Offline teacher cache: the teacher runs once, students train from its top-k many times."""
