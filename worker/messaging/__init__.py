"""The Celery layer: queue and task names, the app factory, the worker's `-A` entry point,
the thin tasks, and the embedded (filesystem) broker's repair and transport. Only these
modules import Celery or kombu.
"""
