"""Model families: one folder per family (Earthformer, PreDiff), each built from ``xearthformer.nn``."""
