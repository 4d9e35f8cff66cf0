"""Reasoning traces: sample a teacher, verify, deduplicate and decontaminate the traces.

`verify` (math answers via math-verify, code via the sandbox), `dedup` (exact, then MinHash
near-duplicates), `decontam` (n-gram overlap with benchmark files) and `endpoint` (a client for
an OpenAI-compatible teacher server). Import the modules directly: each pulls in only what it
needs (math-verify and datasketch are the optional `traces` extra).
"""
