"""From labelled audio to steering vectors: extract (activations cache), analyze (per-layer k-means
and probe report), train (per-layer probes -> a vectors file). CLI: `musicsteer probe ...`."""
