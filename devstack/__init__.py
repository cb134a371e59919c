"""The hermetic local stack and its demo data: every server the project needs, started from its
own venv on loopback (`stack`, `python -m devstack`), the sinks and stand-ins it runs, and the
deterministic demo data (`demo_data`). Development only: production code never imports it.
"""
