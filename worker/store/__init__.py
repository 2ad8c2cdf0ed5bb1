"""The model store a deployment uses, and its administration.

Modules: ``versions`` (immutable version folders and the atomically switched CURRENT and
SHADOW pointers, on disk only) and ``admin`` (changes of those pointers, each recorded in
``model_events`` with who and why, under the short ``model-pointer`` database lease).
"""
