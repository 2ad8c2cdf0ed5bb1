"""Classification: preprocessing, inference and triage rules.

Workers serve each version's LiteRT export (``runtime_litert``, made by ``export`` when a
version is added to the store) and never import TensorFlow; training and evaluation run
the Keras model (TensorFlow imported lazily, inside functions).
"""
