"""Classification: preprocessing, inference (TensorFlow imported lazily) and triage rules."""
