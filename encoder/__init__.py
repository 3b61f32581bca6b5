"""Content-embedding generation (LEARN CEG): frozen LLM, prompt, pooling, batched encoding, worker."""
