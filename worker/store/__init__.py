"""The model store a deployment uses, and its administration.

Modules: ``versions`` (immutable version folders and the atomically switched CURRENT and
SHADOW pointers, on disk only), ``version_files`` (the files of a version folder: the Keras
model, its metadata, the LiteRT export the workers serve) and ``admin`` (changes of those
pointers, each recorded in ``model_events`` with who and why, under the short
``model-pointer`` database lease).
"""
