"""The hermetic local stack: every server the project needs, started from its own venv on loopback."""
