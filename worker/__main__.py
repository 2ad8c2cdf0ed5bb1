"""``python -m worker``: the same as the ``melanoma-triage`` command."""

from worker.cli.main import main

if __name__ == "__main__":
    main()
