"""Airflow-facing adapters of the platform library: hooks, operators, notifiers."""
