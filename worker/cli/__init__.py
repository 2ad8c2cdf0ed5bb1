"""The command line: ``main`` is the ``melanoma-triage`` entry point; options, output and
``status`` are shared by the command groups (each package keeps its own ``cli`` module).
"""
